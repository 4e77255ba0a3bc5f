"""Attentional poolers: learned queries cross-attending to visual tokens (CoCa sec. 3.2)."""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from videococa.models import layers

POOLER_MODES = ("cascade", "parallel", "single", "class_token")


class AttentionalPooler(nn.Module):
  """`[batch, tokens, kv_width] -> [batch, num_queries, width]`: one multi-head cross-attention.

  Optional LayerNorms on the keys/values (`kv_norm`), on the queries (`query_norm`, open_clip's ln_q)
  and on the output (`out_norm`).
  """
  num_queries: int
  width: int
  num_heads: int
  kv_norm: bool = False
  query_norm: bool = False
  out_norm: bool = True
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, tokens):
    if self.kv_norm:
      tokens = layers.layer_norm(self.ln_eps, self.dtype, "kv_norm")(tokens)
    query = self.param("query", layers.logical(nn.initializers.normal(0.02), ("queries", "embed")),
                       (self.num_queries, self.width))
    if self.query_norm:
      query = layers.layer_norm(self.ln_eps, self.dtype, "query_norm")(query)
    query = jnp.broadcast_to(query.astype(self.dtype), (tokens.shape[0], *query.shape))
    out = layers.Attention(self.num_heads, dtype=self.dtype, attention_impl=self.attention_impl,
                           name="attn")(query, tokens)
    if self.out_norm:
      out = layers.layer_norm(self.ln_eps, self.dtype, "out_norm")(out)
    return out


class VisualPooling(nn.Module):
  """Visual tokens -> (contrastive embedding, captioning tokens).

  `__call__(tokens [batch, tokens, kv_width]) -> (pooled [batch, width], caption [batch, q, width])`.
  Modes: 'cascade' (CoCa default: the contrastive pooler attends to the captioning pooler's output),
  'parallel' (both poolers attend to the visual tokens), 'single' (open_clip: one pooler; its first
  query is the contrastive output and the remaining `num_queries - 1` are the captioning tokens),
  'class_token' (CLIP: no pooler; the ViT's class token is the contrastive output, the patch tokens
  the captioning tokens).
  """
  mode: str = "cascade"
  num_queries: int = 256
  width: int = 768
  num_heads: int = 12
  kv_norm: bool = False
  query_norm: bool = False
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, tokens):
    if self.mode not in POOLER_MODES:
      raise ValueError(f"model.pooler.mode={self.mode!r}; choose one of {POOLER_MODES}.")
    pooler = lambda n, name: AttentionalPooler(  # noqa: E731
        n, self.width, self.num_heads, kv_norm=self.kv_norm, query_norm=self.query_norm,
        ln_eps=self.ln_eps, dtype=self.dtype, attention_impl=self.attention_impl, name=name)
    if self.mode == "class_token":
      return tokens[:, 0], tokens[:, 1:]
    if self.mode == "single":
      out = pooler(self.num_queries, "pooler")(tokens)
      return out[:, 0], out[:, 1:]
    caption = pooler(self.num_queries, "caption_pooler")(tokens)
    source = caption if self.mode == "cascade" else tokens
    return pooler(1, "contrastive_pooler")(source)[:, 0], caption
