"""Named model configurations (CoCa paper table 1 sizes and a tiny one for tests)."""
from __future__ import annotations

import ml_collections


def _coca(*, width: int, depth: int, mlp_dim: int, heads: int, text_depth: int, image_size: int,
          patch_size: int, vocab_size: int, max_len: int, num_queries: int, embed_dim: int,
          text_width: int | None = None, text_mlp_dim: int | None = None,
          text_heads: int | None = None) -> ml_collections.ConfigDict:
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
                  kv_norm=False, query_norm=False),
      text=dict(width=text_width, depth=text_depth, mlp_dim=text_mlp_dim, num_heads=text_heads,
                pad_id=0, cls_mask="exact"),
      decoder=dict(depth=text_depth, mlp_dim=text_mlp_dim, num_heads=text_heads,
                   layout=("self_attn", "cross_attn", "mlp")),
      tie_embedding=False,
      vocab_bias=False,
      temperature_init=0.07,
      temperature_range=(0.01, 1.0),
      dtype="float32",
      attention_impl="auto",
      remat_policy="none",
      ln_eps=1e-6,
      mlp_act="gelu",
  ))


PRESETS = {
    # For tests and smoke runs: compiles in seconds on a CPU.
    "coca_tiny": lambda: _coca(width=32, depth=2, mlp_dim=64, heads=2, text_depth=1, image_size=32,
                               patch_size=8, vocab_size=64, max_len=12, num_queries=8,
                               embed_dim=32),
    # CoCa-Base: ViT-B/18 at 288px, 12 + 12 decoder layers, 383M parameters.
    "coca_base": lambda: _coca(width=768, depth=12, mlp_dim=3072, heads=12, text_depth=12,
                               image_size=288, patch_size=18, vocab_size=64_000, max_len=64,
                               num_queries=256, embed_dim=768),
    # CoCa-Large: ViT-L/18 at 288px, decoder width 1024, 787M parameters.
    "coca_large": lambda: _coca(width=1024, depth=24, mlp_dim=4096, heads=16, text_depth=12,
                                image_size=288, patch_size=18, vocab_size=64_000, max_len=64,
                                num_queries=256, embed_dim=1024),
}


def get(name: str) -> ml_collections.ConfigDict:
  """A fresh ConfigDict for the named model; raises with the known names otherwise."""
  if name not in PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; known: {sorted(PRESETS)}.")
  return PRESETS[name]()
