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
Any variant can also add a token adapter (`config.model.token_adapter`, `videococa.models.hooks`)
to the ViT's output tokens before pooling.
A single image is a one-frame clip and gets exactly the image model's output in every variant.
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from videococa.models import layers

VARIANTS = ("attentional_pooler", "factorized", "joint_space_time", "mean_pool")
DEFAULTS = dict(variant="attentional_pooler", num_frames=8, temporal_embedding=False,
                temporal_depth=4)
TEMPORAL_EMBEDDINGS = (False, True, "sincos")


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
