"""Text side of CoCa: the unimodal text encoder (with an appended CLS) and the multimodal decoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from videococa.models import layers

# How the CLS query sees padding. 'exact': keys that are pad tokens are masked, so the CLS reads exactly
# the caption whatever the pad length. 'openclip_legacy': open_clip's CoCa mask, shifted by one key
# (it lets the CLS see the first pad token but not itself); only for converted open_clip weights.
CLS_MASKS = ("exact", "openclip_legacy")


class TextEncoder(nn.Module):
  """Unimodal causal text encoder; its pooled output is the contrastive text embedding.

  `__call__(embedded [batch, len, width], tokens [batch, len] int) ->
  (token_features [batch, len, width], pooled [batch, width])`.

  `pool='cls'` (CoCa): a learnable CLS token is appended at the end. Positions `[0, len)` use the
  first `len` rows of the position table and the CLS always its last row (index `max_len`), so with
  `cls_mask='exact'` its output does not depend on how much padding follows the caption.
  `pool='eos'` (CLIP): no CLS; the output at the first `eos_id` token (CLIP's end-of-text) is pooled.
  `pooled` has the final LayerNorm applied; `token_features` are raw block outputs (what the
  multimodal decoder reads, as in open_clip).

  With `decode` (incremental captioning) there is no CLS and `pooled` is None: each call continues
  the cached prefix at the next positions.
  """
  max_len: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  pad_id: int = 0
  pool: str = "cls"
  cls_mask: str = "exact"
  eos_id: int = 3
  mlp_act: str = "gelu"
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"
  remat_policy: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, embedded, tokens):
    batch, length, _ = embedded.shape
    if length > self.max_len:
      raise ValueError(f"Text of length {length} exceeds model.max_len={self.max_len}.")
    if self.pool not in ("cls", "eos"):
      raise ValueError(f"model.text.pool={self.pool!r}; choose 'cls' (CoCa) or 'eos' (CLIP).")
    if self.cls_mask not in CLS_MASKS:
      raise ValueError(f"model.text.cls_mask={self.cls_mask!r}; choose one of {CLS_MASKS}.")
    with_cls = self.pool == "cls"
    posemb = self.param("pos_embedding", layers.logical(nn.initializers.normal(0.01),
                                                        ("positions", "embed")),
                        (self.max_len + with_cls, self.width))
    if self.decode:
      return self._decode(embedded, posemb), None
    x = embedded + posemb[:length].astype(self.dtype)
    mask = None
    if with_cls:
      cls = self.param("cls_embedding", layers.logical(nn.initializers.normal(0.01), ("embed",)),
                       (self.width,))
      cls = jnp.broadcast_to((cls + posemb[self.max_len]).astype(self.dtype), (batch, 1, self.width))
      x = jnp.concatenate([x, cls], axis=1)
      real = tokens != self.pad_id
      always = jnp.ones((batch, 1), bool)
      key_valid = jnp.concatenate([real, always] if self.cls_mask == "exact" else [always, real], 1)
      mask = key_valid[:, None, None, :]
    x = self._stack()(layers.constrain(x, layers.ACT_SEQUENCE), None, mask)
    final_norm = layers.layer_norm(self.ln_eps, self.dtype, "final_norm")
    if with_cls:
      return x[:, :length], final_norm(x[:, length])
    eos_position = jnp.argmax(tokens == self.eos_id, axis=1)
    return x, final_norm(jnp.take_along_axis(x, eos_position[:, None, None], axis=1)[:, 0])

  def _stack(self, decode: bool = False):
    return causal_stack(self, "encoder", ("self_attn", "mlp"), decode)

  def _decode(self, embedded, posemb):
    """`[batch, n, width]` token embeddings at the next n cached positions -> features."""
    allocated = self.has_variable("cache", "position")
    position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    length = embedded.shape[1]
    if allocated:
      pos = jax.lax.dynamic_slice_in_dim(posemb, position.value, length)
      position.value = position.value + length
    else:
      pos = posemb[:length]
    return self._stack(decode=True)(embedded + pos.astype(self.dtype))


class MultimodalDecoder(nn.Module):
  """Causal decoder cross-attending to the captioning tokens.

  `__call__(text [batch, len, width], visual [batch, queries, visual_width]) -> [batch, len, width]`
  (after the final LayerNorm; the vocabulary projection lives in the CoCa model). With `decode`,
  `visual` is passed once (its cross-attention keys/values are cached) and None afterwards.
  """
  depth: int
  mlp_dim: int
  num_heads: int
  layout: tuple[str, ...] = ("self_attn", "cross_attn", "mlp")
  mlp_act: str = "gelu"
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"
  remat_policy: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, text, visual):
    x = causal_stack(self, "decoder", tuple(self.layout), self.decode)(text, visual)
    return layers.layer_norm(self.ln_eps, self.dtype, "final_norm")(x)


def causal_stack(tower: nn.Module, name: str, layout: tuple[str, ...], decode: bool
                 ) -> layers.Stack:
  """The scanned causal blocks of a text tower (its depth, widths, dtype, ... fields)."""
  return layers.Stack(tower.depth, remat_policy=tower.remat_policy, name=name, block=dict(
      layout=layout, num_heads=tower.num_heads, mlp_dim=tower.mlp_dim, mlp_act=tower.mlp_act,
      ln_eps=tower.ln_eps, causal=True, dtype=tower.dtype, attention_impl=tower.attention_impl,
      decode=decode))
