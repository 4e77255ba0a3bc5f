"""VideoCoCa's ways of turning per-frame visual tokens into clip-level outputs (arXiv 2212.04979).

Variants (`config.model.video.variant`), all on frames `[batch, frames, H, W, 3]`:
* `attentional_pooler` (default): every frame's tokens are flattened into one
  `[batch, frames * tokens, width]` sequence for the poolers; optionally with a learned
  `temporal_embedding` added per frame (the pooler's cross-attention is otherwise blind to frame
  order: "moves left" and "moves right" look alike): `True` starts it at zero, `"sincos"` at a
  1D sin-cos code of the frame index (`sincos_1d`), so frame order is visible from the first step.
* `factorized`: poolers run per frame; a temporal transformer then mixes each pooled slot (the
  contrastive token and every captioning token) across time. Its residual outputs and temporal
  embedding start at zero, so at initialisation it is the identity. Captioning tokens of all frames
  feed the decoder; the time-mean of the contrastive slot is the clip embedding.
* `joint_space_time`: all frames' patch tokens go through the ViT as one sequence, with a
  zero-initialised temporal embedding (see `vit.VisionTransformer`), then the poolers.
* `mean_pool`: poolers run per frame and their outputs are averaged over time (baseline).
With `patch_skip` (any variant) the poolers read the ViT's output plus `PatchSkip` of its input
tokens: a zero-initialised projection of the purely local patch features, so at initialisation the
model is still exactly the inflated image model; with `frame_diff` also of their differences
between consecutive frames (TSN's RGB-difference modality, through the patch embedding), and with
`normal_flow` of each patch's colour-blind motion estimate between consecutive frames
(`normal_flow`, a two-stream network's motion input at its cheapest).
A single image is a one-frame clip and gets exactly the image model's output in every variant.
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from videococa.models import layers

VARIANTS = ("attentional_pooler", "factorized", "joint_space_time", "mean_pool")
DEFAULTS = dict(variant="attentional_pooler", num_frames=8, temporal_embedding=False,
                temporal_depth=4, patch_skip=False, frame_diff=False, normal_flow=False)
TEMPORAL_EMBEDDINGS = (False, True, "sincos")


def normal_flow(frames: jnp.ndarray, patch_size: int, eps: float = 1e-2) -> jnp.ndarray:
  """`[batch, frames, H, W, channels]` in [-1, 1] -> `[batch, frames, tokens, 2]` float32: every
  patch's normal flow (x right, y down) to the next frame, tokens row-major as the ViT's patches;
  zero for the last frame.

  Brightness constancy gives `I_t + v . grad I = 0`; per pixel `-I_t grad I = (grad I grad I^T) v`,
  whose sum over a patch, divided by the patch's gradient energy `sum |grad I|^2`, estimates the
  flow along the patch's edges (the normal flow; Lucas-Kanade without the 2x2 solve, which the
  aperture problem makes singular on straight edges). `I_t` is the frame difference and `grad I`
  the gradient (central differences, one-sided at the border) of the two frames' mean. Both factors change sign with the
  contrast of an edge, so their product, summed over channels, does not depend on colour: a red and
  a blue object moving right give the same sign, which the RGB difference (`frame_diff`) does not
  (README, "Results of the default run"). `eps` keeps flat patches at zero.
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


def sincos_1d(num_frames: int, width: int) -> jnp.ndarray:
  """`[num_frames, width]` sin-cos code of the frame index minus frame 0's (so frame 0 gets zeros and
  a one-frame clip stays exactly the image model): half the channels sin(t w), half cos(t w) - 1,
  at the frequencies of `layers.sincos_angles`."""
  if width % 2:
    raise ValueError(f"A sin-cos temporal embedding needs an even width; got {width}.")
  angle = layers.sincos_angles(jnp.arange(num_frames), width // 2)
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle) - 1.0], axis=1)


def temporal_init(kind):
  """Initializer of the attentional pooler's learned temporal embedding (`TEMPORAL_EMBEDDINGS`)."""
  if kind not in TEMPORAL_EMBEDDINGS:
    raise ValueError(f"model.video.temporal_embedding={kind!r}; choose one of "
                     f"{TEMPORAL_EMBEDDINGS}.")
  if kind == "sincos":
    return lambda key, shape, dtype=jnp.float32: sincos_1d(*shape).astype(dtype)
  return nn.initializers.zeros


def check_frames(num_frames: int, table_size: int) -> None:
  if num_frames > table_size:
    raise ValueError(f"Clip of {num_frames} frames exceeds model.video.num_frames={table_size} "
                     "(the temporal embedding's length); raise it.")


class TemporalEncoder(nn.Module):
  """`[batch, frames, slots, width] -> [batch, frames, slots, width]`: a transformer along time,
  run separately for every slot, starting as the identity (zero-initialised residual outputs and
  temporal embedding)."""
  depth: int
  num_heads: int
  mlp_dim: int
  num_frames: int
  mlp_act: str = "gelu"
  ln_eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32
  attention_impl: str = "xla"
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, x):
    batch, num_frames, slots, width = x.shape
    check_frames(num_frames, self.num_frames)
    temporal = self.param("temporal_embedding", layers.logical(nn.initializers.zeros,
                                                               ("positions", "embed")),
                          (self.num_frames, width))
    x = x + temporal[:num_frames, None, :].astype(x.dtype)
    x = x.transpose(0, 2, 1, 3).reshape(batch * slots, num_frames, width)
    x = layers.Stack(self.depth, remat_policy=self.remat_policy, name="encoder", block=dict(
        layout=("self_attn", "mlp"), num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        mlp_act=self.mlp_act, ln_eps=self.ln_eps, zero_init_residual=True, dtype=self.dtype,
        attention_impl=self.attention_impl))(x)
    return x.reshape(batch, slots, num_frames, width).transpose(0, 2, 1, 3)


class PatchSkip(nn.Module):
  """`[batch, frames, tokens, width] -> [batch, frames, tokens, width]`: LayerNorm then a
  zero-initialised linear map, applied to the ViT's input tokens (patch + position embeddings)
  and added to its output tokens before pooling.

  The last ViT layer of a contrastively trained image model mixes every patch with the others
  (pooling wants global features); where an object is, and so how it moves, is far easier to
  read from the local patch features (README, "Results of the default run"). This is the
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
