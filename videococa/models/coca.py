"""CoCa: contrastive captioner (arXiv 2205.01917) over images or clips.

Visual side: ViT per frame -> visual tokens -> attentional poolers -> (contrastive embedding,
captioning tokens). Text side: token embedding -> unimodal causal encoder with an appended CLS
(contrastive embedding) -> multimodal causal decoder cross-attending to the captioning tokens ->
vocabulary logits. Images are clips of one frame.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from videococa.errors import UserError
from videococa.models import hooks, layers, poolers, text, video as video_lib, vit


def l2_normalize(x: jax.Array) -> jax.Array:
  """Rows of `[..., dim]` scaled to unit L2 norm, in float32 (jax or numpy input)."""
  x = jnp.asarray(x, jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


# Per-channel mean and std taking [0, 1] pixels to [-1, 1]: the input range of CoCa trained here.
UNIT_RANGE_MEAN = (0.5, 0.5, 0.5)
UNIT_RANGE_STD = (0.5, 0.5, 0.5)


def normalize_pixels(frames: jax.Array, mean: Sequence[float], std: Sequence[float]
                     ) -> jax.Array:
  """uint8 pixels `[..., 3]` in [0, 255] -> float32 `(pixels / 255 - mean) / std` per channel.

  Float input is returned unchanged: it is taken as already normalised (e.g. by the pp op
  `normalize`). Batches stay uint8 up to here, which moves 4x fewer bytes host -> device.
  """
  if frames.dtype != jnp.uint8:
    return frames
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  return (frames.astype(jnp.float32) / 255.0 - mean) / std


def init_inputs(model_config: Any, batch_size: int = 1, num_frames: int = 1
                ) -> tuple[jax.Array, jax.Array]:
  """Zero frames `[batch, frames, S, S, 3]` and tokens `[batch, max_len]` for `Model.init` of
  `model_config` (usually under `jax.eval_shape`, so nothing is allocated)."""
  size = model_config["vision"]["image_size"]
  return (jnp.zeros((batch_size, num_frames, size, size, 3), jnp.float32),
          jnp.zeros((batch_size, model_config["max_len"]), jnp.int32))


class Model(nn.Module):
  """CoCa / VideoCoCa. Sizes come from the config sub-dicts (`videococa/models/presets.py` has
  named ones); `video` picks how clips are encoded (`videococa/models/video.py`).

  `__call__(frames, tokens)` with frames `[batch, frames, H, W, 3]` (or images `[batch, H, W, 3]`)
  and tokens `[batch, len]` int returns a dict:
    image_emb `[batch, embed_dim]`, text_emb `[batch, embed_dim]` (both L2-normalised, float32),
    hidden `[batch, len, width]` (decoder output; `logits(hidden)` gives the vocabulary logits),
    logit_scale `[]` (clamped exp of the learned inverse temperature).
  Frames are uint8 pixels, normalised inside with `image_mean` / `image_std` (the pixel statistics
  the weights were trained with: [-1, 1] for models trained here, CLIP's for open_clip weights),
  or floats already normalised.
  """
  embed_dim: int
  vocab_size: int
  max_len: int
  vision: Any
  pooler: Any
  text: Any
  decoder: Any
  video: Any = None
  token_adapter: Any = None  # dict(name=, **kwargs) of a registered adapter (models/hooks.py).
  tie_embedding: bool = False
  vocab_bias: bool = False
  temperature_init: float = 0.07
  temperature_range: tuple[float, float] = (0.01, 1.0)
  dtype: str = "float32"
  attention_impl: str = "auto"
  remat_policy: str = "none"
  ln_eps: float = 1e-6
  mlp_act: str = "gelu"
  image_mean: Sequence[float] = UNIT_RANGE_MEAN  # Of [0, 1] pixels, per RGB channel.
  image_std: Sequence[float] = UNIT_RANGE_STD
  decoding: bool = False  # Incremental captioning with KV caches (see `decode_step`).

  def setup(self):
    dtype = jnp.dtype(self.dtype)
    common = dict(dtype=dtype, attention_impl=self.attention_impl, ln_eps=self.ln_eps)
    towers = dict(common, remat_policy=self.remat_policy, mlp_act=self.mlp_act)
    self.video_cfg = video = {**video_lib.DEFAULTS, **(self.video or {})}
    if video["variant"] not in video_lib.VARIANTS:
      raise ValueError(f"model.video.variant={video['variant']!r}; choose one of "
                       f"{video_lib.VARIANTS}.")
    self.visual = vit.VisionTransformer(
        **self.vision, **towers, num_frames=video["num_frames"],
        joint_space_time=video["variant"] == "joint_space_time",
        with_patch_tokens=bool(self.token_adapter))
    if self.token_adapter:
      self.adapter = hooks.token_adapter(self.token_adapter, patch_size=self.vision["patch_size"],
                                         ln_eps=self.ln_eps, dtype=dtype)
    if video["variant"] == "attentional_pooler" and video["temporal_embedding"]:
      self.frame_embedding = self.param(
          "temporal_embedding",
          layers.logical(video_lib.temporal_init(video["temporal_embedding"]),
                         ("positions", "embed")),
          (video["num_frames"], self.vision["width"]))
    if video["variant"] == "factorized":
      self.temporal_encoder = video_lib.TemporalEncoder(
          depth=video["temporal_depth"], num_heads=self.pooler["num_heads"],
          mlp_dim=4 * self.pooler["width"], num_frames=video["num_frames"], **towers)
    self.pooling = poolers.VisualPooling(**self.pooler, **common)
    self.token_embedding = nn.Embed(
        self.vocab_size, self.text["width"], dtype=dtype, param_dtype=jnp.float32,
        embedding_init=layers.logical(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.text_encoder = text.TextEncoder(max_len=self.max_len, **self.text, **towers,
                                         decode=self.decoding)
    dense = lambda features, axes, name, bias=False: nn.Dense(  # noqa: E731
        features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=layers.logical(nn.initializers.normal(features ** -0.5), axes),
        bias_init=layers.logical(nn.initializers.zeros, axes[1:]))
    self.image_proj = dense(self.embed_dim, ("embed", "proj"), "image_proj")
    self.text_proj = dense(self.embed_dim, ("embed", "proj"), "text_proj")
    if self.decoder["depth"]:
      self.text_decoder = text.MultimodalDecoder(**self.decoder, **towers, decode=self.decoding)
      if not self.tie_embedding:
        self.vocab_proj = dense(self.vocab_size, ("embed", "vocab"), "vocab_proj", self.vocab_bias)
    lo, hi = self.temperature_range
    self.logit_scale_bounds = (math.log(1.0 / hi), math.log(1.0 / lo))
    self.logit_scale = self.param("logit_scale", layers.logical(
        nn.initializers.constant(math.log(1.0 / self.temperature_init)), ()), ())

  def encode_visual(self, frames):
    """`[batch, frames, H, W, 3]` (or `[batch, H, W, 3]`; uint8 pixels or normalised floats) ->
    (image_emb `[batch, embed_dim]` unit length, captioning tokens `[batch, tokens, width]`)."""
    frames = normalize_pixels(frames, self.image_mean, self.image_std)
    if frames.ndim == 4:
      frames = frames[:, None]
    tokens = self.visual(frames)  # [batch, frames, tokens, width]
    if self.token_adapter:
      tokens, input_tokens = tokens
      tokens = tokens + self.adapter(input_tokens, frames)
    batch, num_frames, num_tokens, width = tokens.shape
    variant = self.video_cfg["variant"]
    if variant in ("attentional_pooler", "joint_space_time"):
      if hasattr(self, "frame_embedding"):
        video_lib.check_frames(num_frames, self.video_cfg["num_frames"])
        tokens = tokens + self.frame_embedding[:num_frames, None, :].astype(tokens.dtype)
      pooled, caption = self.pooling(tokens.reshape(batch, num_frames * num_tokens, width),
                                     num_frames)
    else:  # Per-frame pooling.
      pooled, caption = self.pooling(tokens.reshape(batch * num_frames, num_tokens, width))
      pooled = pooled.reshape(batch, num_frames, 1, -1)
      caption = caption.reshape(batch, num_frames, *caption.shape[1:])
      if variant == "factorized":
        mixed = self.temporal_encoder(jnp.concatenate([pooled, caption], axis=2))
        pooled, caption = mixed[:, :, :1], mixed[:, :, 1:]
        caption = caption.reshape(batch, -1, caption.shape[-1])
      else:  # mean_pool
        caption = caption.mean(axis=1)
      pooled = pooled.mean(axis=(1, 2))
    return l2_normalize(self.image_proj(pooled)), caption

  def encode_text(self, tokens):
    """`[batch, len]` int -> (text_emb `[batch, embed_dim]` normalised, features `[b, len, width]`)."""
    features, cls = self.text_encoder(self.token_embedding(tokens), tokens)
    return l2_normalize(self.text_proj(cls)), features

  def decode(self, text_features, caption_tokens):
    """Multimodal decoder: `[batch, len, width]` x `[batch, queries, width]` -> `[batch, len, width]`."""
    return self.text_decoder(text_features, caption_tokens)

  def logits(self, hidden):
    """Vocabulary logits `[..., vocab]` from decoder outputs `[..., width]`."""
    if self.tie_embedding:
      out = self.token_embedding.attend(hidden)
    else:
      out = self.vocab_proj(hidden)
    return layers.constrain(out, ("activation_batch", "activation_length", "activation_vocab"))

  def decode_step(self, tokens, caption_tokens=None):
    """Decoding mode: `tokens` `[batch, n]` continuing the cached prefix -> logits `[batch, n, vocab]`.

    Pass the captioning tokens `[batch, queries, width]` on the first call (their cross-attention
    keys/values are cached) and None afterwards. Allocate the cache with `init_decode_cache`.
    """
    features, _ = self.text_encoder(self.token_embedding(tokens), tokens)
    return self.logits(self.text_decoder(features, caption_tokens))

  def temperature_scale(self):
    return jnp.exp(jnp.clip(self.logit_scale, *self.logit_scale_bounds))

  def __call__(self, frames, tokens):
    image_emb, caption = self.encode_visual(frames)
    text_emb, features = self.encode_text(tokens)
    out = dict(image_emb=image_emb, text_emb=text_emb, logit_scale=self.temperature_scale())
    if self.decoder["depth"]:
      out["hidden"] = self.decode(features, caption)
      if self.is_initializing():  # Create the vocabulary projection's parameters too.
        self.logits(out["hidden"][:, :1])
    return out


def init_decode_cache(model: Model, params: Any, caption_tokens: jax.Array, max_len: int) -> Any:
  """A zeroed decoding cache (the 'cache' collection) for `max_len` tokens, on the batch of
  `caption_tokens` `[batch, queries, width]`. `model` may be in decoding mode or not."""
  model = model.clone(decoding=True)
  tokens = jnp.zeros((caption_tokens.shape[0], max_len), jnp.int32)
  shapes = jax.eval_shape(
      lambda p: model.apply({"params": p}, tokens, caption_tokens, method="decode_step",
                            mutable=["cache"])[1]["cache"], params)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def load(init_params: Any, init_file: str, model_cfg: Any = None, *, step: int | None = None,
         dont_load: Sequence[str] = ()) -> tuple[Any, dict[str, list[str]]]:
  """Initialises `init_params` from the checkpoint at `init_file` (a workdir, its checkpoints/, or a
  `videococa.tools.convert` output): e.g. an image CoCa into a VideoCoCa (inflation).

  Parameters present in both with equal shapes are copied; a ViT position embedding for another
  image size is bilinearly resized; parameters only in `init_params` (temporal embeddings, the
  temporal transformer) keep their fresh initialisation; checkpoint parameters the model does not
  have are ignored. Any other shape mismatch raises naming the parameter and both shapes.
  Parameters whose path matches a regular expression in `dont_load` (big_vision's
  `model_load.dont_load`, e.g. `r"^text_encoder/"`) keep their fresh initialisation too; a pattern
  that matches no parameter raises (a typo would otherwise load everything silently).
  Returns (params, report) with report keys 'copied', 'resized', 'new', 'not_loaded', 'unused'
  (lists of paths).
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from videococa.train import checkpoint, sharding  # pylint: disable=g-import-not-at-top
  loaded, _ = checkpoint.load_params(init_file, step)
  ours = traverse_util.flatten_dict(init_params, sep="/")
  theirs = traverse_util.flatten_dict(loaded, sep="/")
  num_prefix = int(bool(model_cfg and model_cfg["vision"].get("class_token", False)))
  unmatched = [p for p in dont_load if not any(sharding.path_matches(path, [p]) for path in ours)]
  if unmatched:
    raise UserError(f"dont_load patterns {unmatched} match no parameter of the model (paths look "
                    f"like {sorted(ours)[:3]}); fix config.init_dont_load.")
  report: dict[str, list[str]] = dict(copied=[], resized=[], new=[], not_loaded=[], unused=[])
  out = {}
  for path, target in ours.items():
    if sharding.path_matches(path, dont_load):
      out[path] = target
      report["not_loaded"].append(path)
      continue
    if path not in theirs:
      out[path] = target
      report["new"].append(path)
      continue
    source = jnp.asarray(theirs[path])
    if source.shape == target.shape:
      out[path] = source.astype(target.dtype)
      report["copied"].append(path)
    elif path == "visual/pos_embedding" and source.shape[-1] == target.shape[-1]:
      out[path] = vit.resize_posemb(source, _grid(source.shape[0] - num_prefix),
                                    _grid(target.shape[0] - num_prefix), num_prefix)
      report["resized"].append(f"{path} {source.shape} -> {target.shape}")
    else:
      raise UserError(f"Cannot initialise {path} from {init_file}: the checkpoint has shape "
                       f"{source.shape}, the model expects {target.shape}; check config.model "
                       "against the checkpoint's model.")
  report["unused"] = sorted(set(theirs) - set(ours))
  return traverse_util.unflatten_dict(out, sep="/"), report


def _grid(num_tokens: int) -> tuple[int, int]:
  side = math.isqrt(num_tokens)
  if side * side != num_tokens:
    raise ValueError(f"A position embedding of {num_tokens} patch tokens is not a square grid.")
  return side, side
