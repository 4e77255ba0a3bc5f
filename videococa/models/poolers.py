"""Attentional poolers: learned queries cross-attending to visual tokens (CoCa sec. 3.2)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from videococa.models import layers

POOLER_MODES = ("cascade", "parallel", "single", "class_token")
POSITION_ENCODINGS = ("none", "sincos2d")


def posemb_sincos_2d(num_tokens: int, width: int) -> jax.Array:
  """Fixed 2D sin-cos position table `[num_tokens, width]` of a square grid (as big_vision's ViT):
  a quarter of the channels each for sin(x), cos(x), sin(y), cos(y) at the frequencies of
  `layers.sincos_angles`."""
  side = math.isqrt(num_tokens)
  if side * side != num_tokens or width % 4:
    raise ValueError(f"sincos2d positions need a square grid of tokens and a width divisible by 4; "
                     f"got {num_tokens} tokens of width {width} (a class token? use "
                     "model.pooler.position_encoding='none').")
  y, x = jnp.mgrid[:side, :side]
  y, x = (layers.sincos_angles(c.ravel(), width // 4) for c in (y, x))
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


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

  `__call__(tokens [batch, frames * tokens, kv_width], num_frames=1) -> (pooled [batch, width],
  caption [batch, q, width])`: the tokens of `num_frames` frames, one after the other.
  Modes: 'cascade' (CoCa default: the contrastive pooler attends to the captioning pooler's output),
  'parallel' (both poolers attend to the visual tokens), 'single' (open_clip: one pooler; its first
  query is the contrastive output and the remaining `num_queries - 1` are the captioning tokens),
  'class_token' (CLIP: no pooler; the ViT's class token is the contrastive output, the patch tokens
  the captioning tokens).
  `position_encoding='sincos2d'` adds fixed 2D sin-cos positions (`posemb_sincos_2d`) to every
  frame's tokens before pooling, as CLIP's AttentionPool2d adds positions before its pooling
  attention: the pooled outputs then say *where* things are, which per-frame features need for
  the temporal model to see motion (docs/shapes_motion_study.md). No parameters.
  """
  mode: str = "cascade"
  num_queries: int = 256
  width: int = 768
  num_heads: int = 12
  kv_norm: bool = False
  query_norm: bool = False
  position_encoding: str = "none"
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, tokens, num_frames: int = 1):
    if self.mode not in POOLER_MODES:
      raise ValueError(f"model.pooler.mode={self.mode!r}; choose one of {POOLER_MODES}.")
    if self.position_encoding not in POSITION_ENCODINGS:
      raise ValueError(f"model.pooler.position_encoding={self.position_encoding!r}; choose one of "
                       f"{POSITION_ENCODINGS}.")
    if self.position_encoding == "sincos2d":
      batch, length, width = tokens.shape
      frames = tokens.reshape(batch, num_frames, length // num_frames, width)
      frames = frames + posemb_sincos_2d(length // num_frames, width).astype(tokens.dtype)
      tokens = frames.reshape(tokens.shape)
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
