"""Named model configurations: CoCa paper table 1 sizes, a tiny one for tests, and open_clip's.

The `openclip_*` presets reproduce open_clip's architectures exactly (`videococa/openclip.py`
converts their weights): CoCa with open_clip's single attentional pooler and legacy CLS mask, and
plain CLIP (class-token pooling, end-of-text text pooling, no decoder).
"""
from __future__ import annotations

import ml_collections

from videococa.errors import UserError


def coca(*, width: int, depth: int, mlp_dim: int, heads: int, text_depth: int, image_size: int,
         patch_size: int, vocab_size: int, max_len: int, num_queries: int, embed_dim: int,
         text_width: int | None = None, text_mlp_dim: int | None = None,
         text_heads: int | None = None, pooler_positions: str = "none",
         tie_embedding: bool = False) -> ml_collections.ConfigDict:
  """CoCa with the paper's layout (cascade poolers, exact CLS mask); sizes as arguments."""
  text_width = text_width or width
  text_mlp_dim = text_mlp_dim or mlp_dim
  text_heads = text_heads or heads
  return ml_collections.ConfigDict(dict(
      embed_dim=embed_dim,
      vocab_size=vocab_size,
      max_len=max_len,
      vision=dict(image_size=image_size, patch_size=patch_size, width=width, depth=depth,
                  mlp_dim=mlp_dim, num_heads=heads, class_token=False, pre_norm=False,
                  final_norm=True, patch_bias=True),
      pooler=dict(mode="cascade", num_queries=num_queries, width=text_width, num_heads=text_heads,
                  kv_norm=False, query_norm=False, position_encoding=pooler_positions),
      text=dict(width=text_width, depth=text_depth, mlp_dim=text_mlp_dim, num_heads=text_heads,
                pad_id=0, cls_mask="exact"),
      decoder=dict(depth=text_depth, mlp_dim=text_mlp_dim, num_heads=text_heads,
                   layout=("self_attn", "cross_attn", "mlp")),
      tie_embedding=tie_embedding,
      vocab_bias=False,
      temperature_init=0.07,
      temperature_range=(0.01, 1.0),
      dtype="float32",
      attention_impl="auto",
      remat_policy="none",
      ln_eps=1e-6,
      mlp_act="gelu",
      image_mean=(0.5, 0.5, 0.5),  # Pixels in [0, 1] -> [-1, 1].
      image_std=(0.5, 0.5, 0.5),
  ))


# open_clip's default pixel normalisation (OPENAI_DATASET_MEAN / _STD, of [0, 1] RGB pixels).
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def openclip_coca(*, embed_dim: int, image_size: int, patch_size: int, vision_width: int,
                  vision_depth: int, vision_heads: int, text_width: int, text_depth: int,
                  text_heads: int, decoder_depth: int, decoder_heads: int, pooler_heads: int,
                  pooler_queries: int = 256, vocab_size: int = 49408, context_length: int = 76,
                  pad_id: int = 0, vision_mlp_ratio: float = 4.0, text_mlp_ratio: float = 4.0,
                  mlp_act: str = "gelu") -> ml_collections.ConfigDict:
  """open_clip's `CoCa` (`attentional_pool=True`, `embed_cls=True`); arguments mirror its config.

  Visual: CLIP ViT (class token, ln_pre, no bias on the patch conv) -> one attentional pooler of
  `pooler_queries` queries of width `embed_dim` (ln_k, ln_q, then ln_post on its output): query 0 is
  the contrastive output, the other queries are the decoder's captioning tokens. Text: CLS appended
  with open_clip's legacy padding mask. Decoder: each layer is open_clip's self-attention resblock
  followed by its cross-attention resblock (open_clip always gives the decoder 4x MLPs). MLP widths
  are `int(width * mlp_ratio)` as in open_clip; LayerNorm epsilon 1e-5 (torch's default).
  """
  return ml_collections.ConfigDict(dict(
      embed_dim=embed_dim,
      vocab_size=vocab_size,
      max_len=context_length,
      vision=_openclip_vision(image_size, patch_size, vision_width, vision_depth, vision_heads,
                              vision_mlp_ratio, final_norm=False),
      pooler=dict(mode="single", num_queries=pooler_queries, width=embed_dim,
                  num_heads=pooler_heads, kv_norm=True, query_norm=True),
      text=dict(width=text_width, depth=text_depth, mlp_dim=int(text_width * text_mlp_ratio),
                num_heads=text_heads, pad_id=pad_id, pool="cls", cls_mask="openclip_legacy"),
      decoder=dict(depth=decoder_depth, mlp_dim=4 * text_width, num_heads=decoder_heads,
                   layout=("self_attn", "mlp", "cross_attn", "mlp")),
      **_openclip_common(mlp_act)))


def openclip_clip(*, embed_dim: int, image_size: int, patch_size: int, vision_width: int,
                  vision_depth: int, vision_heads: int, text_width: int, text_depth: int,
                  text_heads: int, eos_id: int = 49407, vocab_size: int = 49408,
                  context_length: int = 77, vision_mlp_ratio: float = 4.0,
                  text_mlp_ratio: float = 4.0, mlp_act: str = "gelu") -> ml_collections.ConfigDict:
  """open_clip's `CLIP` (ViT vision tower; arguments mirror its config): no multimodal decoder.

  Visual: class token after ln_post (`final_norm`), then `visual.proj`. Text: causal encoder pooled
  at the first `eos_id` token after ln_final (open_clip's 'argmax' pooling when, as with CLIP's
  tokenizer, the end-of-text token has the largest id).
  """
  return ml_collections.ConfigDict(dict(
      embed_dim=embed_dim,
      vocab_size=vocab_size,
      max_len=context_length,
      vision=_openclip_vision(image_size, patch_size, vision_width, vision_depth, vision_heads,
                              vision_mlp_ratio, final_norm=True),
      pooler=dict(mode="class_token"),
      text=dict(width=text_width, depth=text_depth, mlp_dim=int(text_width * text_mlp_ratio),
                num_heads=text_heads, pad_id=0, pool="eos", eos_id=eos_id),
      decoder=dict(depth=0),
      **_openclip_common(mlp_act)))


def _openclip_vision(image_size: int, patch_size: int, width: int, depth: int, heads: int,
                     mlp_ratio: float, final_norm: bool) -> dict:
  """open_clip's VisionTransformer: class token, ln_pre, no conv bias; ln_post as `final_norm`
  (CLIP) or after the attentional pooler (CoCa)."""
  return dict(image_size=image_size, patch_size=patch_size, width=width, depth=depth,
              mlp_dim=int(width * mlp_ratio), num_heads=heads, class_token=True, pre_norm=True,
              final_norm=final_norm, patch_bias=False)


def _openclip_common(mlp_act: str) -> dict:
  return dict(tie_embedding=False, vocab_bias=False, temperature_init=0.07,
              temperature_range=(0.01, 1.0), dtype="float32", attention_impl="auto",
              remat_policy="none", ln_eps=1e-5, mlp_act=mlp_act, image_mean=CLIP_IMAGE_MEAN,
              image_std=CLIP_IMAGE_STD)


PRESETS = {
    # For tests and smoke runs: compiles in seconds on a CPU.
    "coca_tiny": lambda: coca(width=32, depth=2, mlp_dim=64, heads=2, text_depth=1, image_size=32,
                              patch_size=8, vocab_size=64, max_len=12, num_queries=8,
                              embed_dim=32),
    # CoCa-Base: ViT-B/18 at 288px, 12 + 12 decoder layers, 383M parameters.
    "coca_base": lambda: coca(width=768, depth=12, mlp_dim=3072, heads=12, text_depth=12,
                              image_size=288, patch_size=18, vocab_size=64_000, max_len=64,
                              num_queries=256, embed_dim=768),
    # CoCa-Large: ViT-L/18 at 288px, decoder width 1024, 787M parameters.
    "coca_large": lambda: coca(width=1024, depth=24, mlp_dim=4096, heads=16, text_depth=12,
                               image_size=288, patch_size=18, vocab_size=64_000, max_len=64,
                               num_queries=256, embed_dim=1024),
    # CoCa (the paper's 2.1B): ViT-g/18 (40 layers, width 1408, MLP 6144) at 288px, 18 + 18
    # decoder layers with MLP 5632. Input and output word embeddings are tied: the paper's decoder
    # count (1.1B) fits a tied table (-1%); untied, the decoder alone is 7% over.
    "coca_giant": lambda: coca(width=1408, depth=40, mlp_dim=6144, heads=16, text_depth=18,
                               text_mlp_dim=5632, image_size=288, patch_size=18,
                               vocab_size=64_000, max_len=64, num_queries=256, embed_dim=1408,
                               tie_embedding=True),
    # open_clip's model_configs/coca_ViT-B-32.json (attn_pooler_heads from its vision_cfg).
    "openclip_coca_vit_b32": lambda: openclip_coca(
        embed_dim=512, image_size=224, patch_size=32, vision_width=768, vision_depth=12,
        vision_heads=12, text_width=512, text_depth=12, text_heads=8, decoder_depth=12,
        decoder_heads=8, pooler_heads=8),
    # open_clip's model_configs/coca_ViT-L-14.json.
    "openclip_coca_vit_l14": lambda: openclip_coca(
        embed_dim=768, image_size=224, patch_size=14, vision_width=1024, vision_depth=24,
        vision_heads=16, text_width=768, text_depth=12, text_heads=12, decoder_depth=12,
        decoder_heads=12, pooler_heads=8),
    # open_clip's model_configs/ViT-B-32.json and ViT-B-16.json (GELU, not OpenAI's QuickGELU).
    "openclip_vit_b32": lambda: openclip_clip(
        embed_dim=512, image_size=224, patch_size=32, vision_width=768, vision_depth=12,
        vision_heads=12, text_width=512, text_depth=12, text_heads=8),
    "openclip_vit_b16": lambda: openclip_clip(
        embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_depth=12,
        vision_heads=12, text_width=512, text_depth=12, text_heads=8),
}


def get(name: str) -> ml_collections.ConfigDict:
  """A fresh ConfigDict for the named model; raises with the known names otherwise."""
  if name not in PRESETS:
    raise UserError(f"Unknown model preset {name!r}; known: {sorted(PRESETS)}.")
  return PRESETS[name]()
