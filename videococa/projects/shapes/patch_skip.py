"""The shapes project's token adapter: the patch skip, with frame differences and normal flow.

Registered as
`config.model.token_adapter = dict(name="patch_skip", frame_diff=..., normal_flow=...)`
(`videococa.models.hooks`). Our deviation from VideoCoCa, whose poolers read the ViT's output
tokens only; it starts at zero, so at initialisation the model is exactly the image model.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from videococa.models import hooks, layers


def normal_flow(frames: jnp.ndarray, patch_size: int, eps: float = 1e-2) -> jnp.ndarray:
  """`[batch, frames, H, W, channels]` in [-1, 1] -> `[batch, frames, tokens, 2]` float32: every
  patch's normal flow (x right, y down) to the next frame, tokens row-major as the ViT's patches;
  zero for the last frame.

  Brightness constancy gives `I_t + v . grad I = 0`; per pixel `-I_t grad I = (grad I grad I^T) v`,
  whose sum over a patch, divided by the patch's gradient energy `sum |grad I|^2`, estimates the
  flow along the patch's edges (the normal flow; Lucas-Kanade without the 2x2 solve, which the
  aperture problem makes singular on straight edges). `I_t` is the frame difference and `grad I`
  the gradient (central differences, one-sided at the border) of the two frames' mean. Both factors
  change sign with the contrast of an edge, so their product, summed over channels, does not depend
  on colour: a red and a blue object moving right give the same sign, which the RGB difference
  (`frame_diff`) does not (docs/shapes_motion_study.md). `eps` keeps flat patches at zero.
  """
  f = frames.astype(jnp.float32)
  mean, change = 0.5 * (f[:, 1:] + f[:, :-1]), f[:, 1:] - f[:, :-1]  # [b, t - 1, H, W, c]
  grad_y, grad_x = jnp.gradient(mean, axis=(2, 3))
  per_pixel = jnp.stack([-(change * grad_x).sum(-1), -(change * grad_y).sum(-1),
                         (grad_x ** 2 + grad_y ** 2).sum(-1)], axis=-1)  # [b, t - 1, H, W, 3]
  b, t, height, width, _ = per_pixel.shape
  p = patch_size
  per_patch = per_pixel.reshape(b, t, height // p, p, width // p, p, 3).sum(axis=(3, 5))
  flow = per_patch[..., :2] / (per_patch[..., 2:] + eps)
  flow = flow.reshape(b, t, (height // p) * (width // p), 2)
  return jnp.concatenate([flow, jnp.zeros((b, 1) + flow.shape[2:], flow.dtype)], axis=1)


@hooks.register_token_adapter("patch_skip")
class PatchSkip(nn.Module):
  """`[batch, frames, tokens, width] -> [batch, frames, tokens, width]`: LayerNorm then a
  zero-initialised linear map, applied to the ViT's input tokens (patch + position embeddings)
  and added to its output tokens before pooling.

  The last ViT layer of a contrastively trained image model mixes every patch with the others
  (pooling wants global features); where an object is, and so how it moves, is far easier to
  read from the local patch features (docs/shapes_motion_study.md). This is the
  simplest form of reading several ViT layers (as EVL does with a frozen CLIP). It sits outside
  `visual/`, so it trains in `lit` mode.

  With `frame_diff`, a second LayerNorm and zero-initialised map read the input tokens' change
  to the next frame, `x[t + 1] - x[t]` (zero for the last frame): the patch embedding of the
  frame difference, as the patch embedding is linear. Which side of a patch gains or loses an
  object's colour gives the direction of motion locally, so any pooler's average sees it (TSN's
  RGB-difference input, Wang et al. 2016).

  With `normal_flow`, a small MLP with a zero-initialised output reads every patch's normal flow
  to the next frame (`normal_flow(frames, patch_size)`, so `frames` must be given): a motion
  estimate that is the same for every colour, so what is learned about a direction from red
  objects holds for blue ones too.
  """
  frame_diff: bool = False
  normal_flow: bool = False
  patch_size: int = 0  # Needed with `normal_flow`: the ViT's patch size.
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32

  def _project(self, x, name):
    x = layers.layer_norm(self.ln_eps, self.dtype, f"{name}norm")(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name=f"{name}proj",
                    kernel_init=layers.logical(nn.initializers.zeros, ("embed", "mlp")),
                    bias_init=layers.logical(nn.initializers.zeros, ("mlp",)))(x)

  @nn.compact
  def __call__(self, patch_tokens, frames=None):
    """patch_tokens `[batch, frames, tokens, width]`; frames `[batch, frames, H, W, channels]`."""
    out = self._project(patch_tokens, "")
    if self.frame_diff:
      diff = jnp.concatenate([patch_tokens[:, 1:] - patch_tokens[:, :-1],
                              jnp.zeros_like(patch_tokens[:, :1])], axis=1)
      out = out + self._project(diff, "diff_")
    if self.normal_flow:
      width = patch_tokens.shape[-1]
      flow = normal_flow(frames, self.patch_size).astype(self.dtype)
      num_prefix = patch_tokens.shape[2] - flow.shape[2]  # A class token gets zero flow.
      flow = jnp.pad(flow, ((0, 0), (0, 0), (num_prefix, 0), (0, 0)))
      hidden = nn.gelu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                                name="flow_hidden",
                                kernel_init=layers.logical(nn.initializers.lecun_normal(),
                                                           (None, "mlp")),
                                bias_init=layers.logical(nn.initializers.zeros, ("mlp",)))(flow))
      out = out + nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="flow_proj",
                           kernel_init=layers.logical(nn.initializers.zeros, ("mlp", "embed")),
                           bias_init=layers.logical(nn.initializers.zeros, ("embed",)))(hidden)
    return out
