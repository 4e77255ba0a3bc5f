"""Vision Transformer image encoder, applied to every frame of a clip."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from videococa.models import layers


def resize_posemb(posemb: jax.Array, old_grid: tuple[int, int], new_grid: tuple[int, int],
                  num_prefix: int) -> jax.Array:
  """Bilinearly resizes the grid part of a `[num_prefix + gh * gw, width]` position embedding."""
  if tuple(old_grid) == tuple(new_grid):
    return posemb
  prefix, grid = posemb[:num_prefix], posemb[num_prefix:]
  grid = grid.reshape(*old_grid, grid.shape[-1])
  grid = jax.image.resize(grid, (*new_grid, grid.shape[-1]), method="bilinear")
  return jnp.concatenate([prefix, grid.reshape(-1, grid.shape[-1])], axis=0)


class VisionTransformer(nn.Module):
  """ViT: patchify each frame, add learned positions, pre-LN transformer blocks.

  `__call__(frames [batch, frames, H, W, 3]) -> tokens [batch, frames, tokens, width]`; `tokens` is the
  number of patches plus one if `class_token` (the class token comes first). With
  `with_patch_tokens` it returns `(tokens, patch_tokens)`, `patch_tokens` the same shape: the
  transformer's input (patch embedding + position embedding, before any block), i.e. purely local
  features of each patch. By default frames are folded into the batch, so every frame is encoded
  independently by the same weights. With `joint_space_time` (VideoCoCa's joint encoder) all
  frames' tokens form one sequence and a learned temporal embedding (zero-initialised,
  `num_frames` rows) is added, so at initialisation every token starts from its per-frame spatial
  embedding. The position embedding is stored for `image_size` and bilinearly resized when the
  input has another size.
  """
  image_size: int
  patch_size: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  class_token: bool = False
  pre_norm: bool = False  # LayerNorm before the blocks (CLIP's ln_pre).
  final_norm: bool = True
  patch_bias: bool = True
  joint_space_time: bool = False
  num_frames: int = 1
  with_patch_tokens: bool = False
  mlp_act: str = "gelu"
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"
  remat_policy: str = "none"

  @property
  def grid(self) -> tuple[int, int]:
    return (self.image_size // self.patch_size,) * 2

  @nn.compact
  def __call__(self, frames):
    batch, num_frames, height, width, _ = frames.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"Frames of {height}x{width} are not divisible by model.vision.patch_size={p}; "
                       f"resize the input (e.g. to {self.image_size}) or change the patch size.")
    x = frames.reshape(batch * num_frames, height, width, frames.shape[-1]).astype(self.dtype)
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                dtype=self.dtype, param_dtype=jnp.float32, name="patch_embed",
                kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                           (None, None, None, "embed")),
                bias_init=layers.logical(nn.initializers.zeros, ("embed",)))(x)
    grid = (height // p, width // p)
    x = x.reshape(batch * num_frames, grid[0] * grid[1], self.width)
    num_prefix = int(self.class_token)
    if self.class_token:
      cls = self.param("class_embedding", layers.logical(nn.initializers.normal(0.02), ("embed",)),
                       (self.width,))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x], 1)
    posemb = self.param("pos_embedding", layers.logical(nn.initializers.normal(0.02),
                                                        ("positions", "embed")),
                        (num_prefix + self.grid[0] * self.grid[1], self.width))
    x = x + resize_posemb(posemb, self.grid, grid, num_prefix).astype(x.dtype)
    patch_tokens = x.reshape(batch, num_frames, -1, self.width)
    if self.joint_space_time:
      x = self._add_time(patch_tokens)
    x = layers.constrain(x, layers.ACT_SEQUENCE)
    if self.pre_norm:
      x = layers.layer_norm(self.ln_eps, self.dtype, "pre_norm")(x)
    x = layers.Stack(self.depth, remat_policy=self.remat_policy, name="encoder", block=dict(
        layout=("self_attn", "mlp"), num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        mlp_act=self.mlp_act, ln_eps=self.ln_eps, dtype=self.dtype,
        attention_impl=self.attention_impl))(x)
    if self.final_norm:
      x = layers.layer_norm(self.ln_eps, self.dtype, "final_norm")(x)
    x = x.reshape(batch, num_frames, -1, self.width)
    return (x, patch_tokens) if self.with_patch_tokens else x

  def _add_time(self, x):
    """`[batch, frames, tokens, width]` + temporal embedding -> `[batch, frames * tokens, width]`."""
    batch, num_frames, num_tokens, width = x.shape
    if num_frames > self.num_frames:
      raise ValueError(f"Clip of {num_frames} frames exceeds model.video.num_frames="
                       f"{self.num_frames} (the temporal embedding's length); raise it.")
    temporal = self.param("temporal_embedding", layers.logical(nn.initializers.zeros,
                                                               ("positions", "embed")),
                          (self.num_frames, width))
    x = x + temporal[:num_frames, None, :].astype(x.dtype)
    return x.reshape(batch, num_frames * num_tokens, width)
