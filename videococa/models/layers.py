"""Transformer building blocks shared by every tower, with logical-axis annotations.

A `Block` is a pre-LayerNorm residual stack of sub-layers named by `layout`, e.g. `('self_attn', 'mlp')`
for ViT / text encoder layers, `('self_attn', 'cross_attn', 'mlp')` for CoCa's multimodal decoder, or
open_clip's `('self_attn', 'mlp', 'cross_attn', 'mlp')`. `Stack` scans identical blocks over depth
(`nn.scan`, one compiled layer) with an optional rematerialisation policy.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # No rematerialisation: keep every activation for the backward pass.
    "full": jax.checkpoint_policies.nothing_saveable,  # Recompute the whole layer.
    "dots": jax.checkpoint_policies.checkpoint_dots,  # Keep matmul outputs, recompute the rest.
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # erf GELU (torch nn.GELU).
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP.
    "relu": jax.nn.relu,
}

ACT_SEQUENCE = ("activation_batch", "activation_length", "activation_embed")


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical axis names (a no-op outside a mesh context)."""
  return nn.with_logical_constraint(x, tuple(axes))


def logical(init: Callable, axes: Sequence[str | None]) -> Callable:
  return nn.with_logical_partitioning(init, tuple(axes))


def sincos_angles(positions: jax.Array, count: int, temperature: float = 100.) -> jax.Array:
  """`[len(positions), count]` angles `position * w` at `count` geometric frequencies w from 1 down
  to 1/temperature: the argument of the fixed sin-cos position codes (`poolers.posemb_sincos_2d`,
  `video.sincos_1d`). big_vision's temperature 10_000 leaves most channels nearly constant on grids
  of 8-16 positions; 100 still separates positions hundreds apart."""
  omega = 1.0 / temperature ** (jnp.arange(count) / max(count - 1, 1))
  return jnp.outer(positions, omega)


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, name=name,
                      scale_init=logical(nn.initializers.ones, ("norm",)),
                      bias_init=logical(nn.initializers.zeros, ("norm",)))


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def resolve_attention_impl(impl: str, dtype: Dtype) -> str:
  """'auto' -> cuDNN fused attention on GPU for 16-bit compute, XLA otherwise."""
  if impl != "auto":
    return impl
  on_gpu = jax.default_backend() == "gpu"
  return "cudnn" if on_gpu and jnp.dtype(dtype).itemsize == 2 else "xla"


class HeadsProjection(nn.Module):
  """`[..., width] -> [..., heads, head_dim]` (kernel `[width, heads, head_dim]`, bias)."""
  num_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    kernel = self.param("kernel", logical(init, ("embed", "heads", "kv")),
                        (x.shape[-1], self.num_heads, self.head_dim))
    bias = self.param("bias", logical(nn.initializers.zeros, ("heads", "kv")),
                      (self.num_heads, self.head_dim))
    y = jnp.einsum("...d,dhk->...hk", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class HeadsOutput(nn.Module):
  """`[..., heads, head_dim] -> [..., width]` (kernel `[heads, head_dim, width]`, bias)."""
  width: int
  dtype: Dtype = jnp.float32
  zero_init: bool = False

  @nn.compact
  def __call__(self, x):
    init = (nn.initializers.zeros if self.zero_init else
            nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2))
    kernel = self.param("kernel", logical(init, ("heads", "kv", "embed")), (*x.shape[-2:], self.width))
    bias = self.param("bias", logical(nn.initializers.zeros, ("embed",)), (self.width,))
    return jnp.einsum("...hk,hkd->...d", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head dot-product attention with separate query / key / value projections.

  `x` `[batch, q_len, width]`; `context` `[batch, kv_len, kv_width]` for cross-attention (given,
  or `cross` for a cross-attention that reads cached keys/values while decoding);
  `mask` boolean, broadcastable to `[batch, heads, q_len, kv_len]`, True = attend. Returns
  `[batch, q_len, width]`.

  With `decode` (incremental decoding), keys/values live in the 'cache' collection. The cache is
  allocated by an `init` call on full-length inputs. Self-attention then appends each call's keys /
  values at the cache index and attends causally to everything cached so far; cross-attention
  projects `context` once (the call that passes it) and reuses the cached keys / values on calls
  with `context=None`.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"
  is_causal: bool = False
  zero_init_output: bool = False
  cross: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, context=None, mask=None):
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}.")
    project = functools.partial(HeadsProjection, self.num_heads, width // self.num_heads, self.dtype)
    heads_axes = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q = constrain(project(name="query")(x), heads_axes)
    is_causal = self.is_causal
    if self.cross or context is not None:
      k, v = self._cross_keys_values(project, context)
    else:
      k, v = project(name="key")(x), project(name="value")(x)
      if self.decode and self.has_variable("cache", "cached_key"):
        k, v, mask = self._append_to_cache(k, v)
        is_causal = False  # The cache mask is causal already.
      elif self.decode:  # Allocating the cache.
        self._append_to_cache(k, v)
    k, v = constrain(k, heads_axes), constrain(v, heads_axes)
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal,
        implementation=resolve_attention_impl(self.attention_impl, self.dtype))
    out = HeadsOutput(width, self.dtype, self.zero_init_output, name="out")(out)
    return constrain(out, ACT_SEQUENCE)

  def _cross_keys_values(self, project, context):
    if context is not None:
      k, v = project(name="key")(context), project(name="value")(context)
      if self.decode:
        self.put_variable("cache", "cached_key", k)
        self.put_variable("cache", "cached_value", v)
      return k, v
    if not self.decode:
      raise ValueError("Cross-attention needs a context outside decode mode.")
    return self.get_variable("cache", "cached_key"), self.get_variable("cache", "cached_value")

  def _append_to_cache(self, k, v):
    """Writes `[batch, n, heads, head_dim]` keys/values at the cache index; returns all cached keys,
    values `[batch, max_len, heads, head_dim]` and the causal mask `[1, 1, n, max_len]`."""
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                  (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                  (0, i, 0, 0))
    index.value = i + k.shape[1]
    query_pos = i + jnp.arange(k.shape[1])
    mask = jnp.arange(cached_k.value.shape[1])[None, :] <= query_pos[:, None]
    return cached_k.value, cached_v.value, mask[None, None]


class Mlp(nn.Module):
  """Two-layer MLP `[..., width] -> [..., mlp_dim] -> [..., width]`."""
  mlp_dim: int
  act: str = "gelu"
  dtype: Dtype = jnp.float32
  zero_init_output: bool = False

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    h = dense(self.mlp_dim, name="fc1",
              kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", "mlp")),
              bias_init=logical(nn.initializers.zeros, ("mlp",)))(x)
    h = constrain(ACTIVATIONS[self.act](h), ("activation_batch", "activation_length", "activation_mlp"))
    out_init = nn.initializers.zeros if self.zero_init_output else nn.initializers.xavier_uniform()
    out = dense(x.shape[-1], name="fc2", kernel_init=logical(out_init, ("mlp", "embed")),
                bias_init=logical(nn.initializers.zeros, ("embed",)))(h)
    return constrain(out, ACT_SEQUENCE)


def sublayer_names(layout: Sequence[str]) -> list[str]:
  """Parameter-scope names of a layout's sub-layers: 'mlp', 'mlp_2', ... for repeated kinds."""
  names, seen = [], {}
  for kind in layout:
    seen[kind] = seen.get(kind, 0) + 1
    names.append(kind if seen[kind] == 1 else f"{kind}_{seen[kind]}")
  return names


class Block(nn.Module):
  """Pre-LayerNorm residual block: `x = x + sublayer(LayerNorm(x))` for each kind in `layout`.

  Kinds: 'self_attn' (causal if `causal`), 'cross_attn' (to `context`, whose LayerNorm is optional),
  'mlp'. With `zero_init_residual` every sub-layer's output projection starts at zero, so the block
  starts as the identity (used for layers added to a pretrained model). `decode` switches the
  attention to KV-cached incremental decoding. Called as `(x, context, mask) -> (x, None)` so that
  `nn.scan` can carry `x` `[batch, len, width]` over layers; `context` `[batch, ctx_len, ctx_width]`
  and `mask` are shared by all layers.
  """
  layout: tuple[str, ...]
  num_heads: int
  mlp_dim: int
  mlp_act: str = "gelu"
  ln_eps: float = 1e-6
  causal: bool = False
  cross_attn_kv_norm: bool = True
  zero_init_residual: bool = False
  decode: bool = False
  dtype: Dtype = jnp.float32
  attention_impl: str = "xla"

  @nn.compact
  def __call__(self, x, context=None, mask=None):
    attention = functools.partial(Attention, num_heads=self.num_heads, dtype=self.dtype,
                                  attention_impl=self.attention_impl, decode=self.decode,
                                  zero_init_output=self.zero_init_residual)
    for kind, name in zip(self.layout, sublayer_names(self.layout)):
      h = layer_norm(self.ln_eps, self.dtype, f"{name}_norm")(x)
      if kind == "self_attn":
        h = attention(is_causal=self.causal, name=name)(h, mask=mask)
      elif kind == "cross_attn":
        kv = context
        if self.cross_attn_kv_norm and kv is not None:
          kv = layer_norm(self.ln_eps, self.dtype, f"{name}_kv_norm")(kv)
        h = attention(cross=True, name=name)(h, kv)
      elif kind == "mlp":
        h = Mlp(self.mlp_dim, self.mlp_act, self.dtype, self.zero_init_residual, name=name)(h)
      else:
        raise ValueError(f"Unknown sub-layer kind {kind!r} in layout {self.layout}; "
                         "use 'self_attn', 'cross_attn' or 'mlp'.")
      x = constrain(x + h, ACT_SEQUENCE)
    return x, None


class Stack(nn.Module):
  """`depth` identical `Block`s, scanned (parameters stacked on a leading 'layers' axis).

  `block` holds the `Block` fields; `remat_policy` is a key of `REMAT_POLICIES` (ignored when
  decoding). Decoding caches are stacked on the same leading axis.
  """
  depth: int
  block: dict
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, x, context=None, mask=None):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; choose one of {list(REMAT_POLICIES)}.")
    block_cls = Block
    if self.remat_policy != "none" and not self.block.get("decode", False):
      block_cls = nn.remat(Block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
    scanned = nn.scan(block_cls, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(**self.block, name="layers")(x, context, mask)
    return x
