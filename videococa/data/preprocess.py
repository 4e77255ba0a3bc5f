r"""Preprocessing ops and big_vision-style pp strings: `'op(args)|op(args)|...'` -> one function.

  fn = get_preprocess_fn('sample_frames(8, mode="random_segment")|decode_video|'
                         'random_resized_crop(64, scale=(0.5, 1.0))|choose_caption|tokenize(17)|'
                         'keep("frames", "text")', tokenizer=tok)
  example = fn(example)  # dict of tf tensors -> dict of tf tensors, inside a tf.data map.

Each op call is parsed with Python's `ast` (arguments are Python literals without '|', which
separates the ops) and looked up in a
registry filled with `@register('name')`; a factory takes the op's arguments and returns
`fn(example: dict) -> dict`. `get_preprocess_fn` names the offending op (and lists the known ones)
for unknown ops, bad syntax and bad arguments.

Keys:
  video    encoded clip: string `[T]` (one JPEG/PNG per frame) as read from TFDS, or uint8
           `[T, H, W, 3]` when the pipeline cached decoded clips (`config.input.cache`).
  image    encoded image: string `[]`, or uint8 `[H, W, 3]` when cached.
  frames   decoded clip: uint8 `[T, H, W, 3]` (images become `[1, H, W, 3]`).
  captions string `[N]` reference captions; caption: string `[]`; text: int32 `[..., max_len]`.
  negatives  int32 `[K, len]` hard-negative texts of the chosen caption (a project's pp op makes
           them, e.g. the shapes project's `motion_negatives`), read by the contrastive loss.
  _seed    int64 `[2]` per-example stateless seed, added by the pipeline (`SEED_KEY`).

Frames stay uint8 throughout: the model normalises them on device with its config's
`image_mean` / `image_std`, which moves 4x fewer bytes host -> device than float32. `value_range`
and `normalize` exist for float consumers but are not part of the default strings.

Decoding only what is used: `sample_frames` works on whatever clip the example holds, so
`sample_frames(8)|decode_video` decodes 8 JPEGs while `decode_video|sample_frames(8)` decodes all T
(same output, slower). Put sampling first.

Randomness: random ops never use TensorFlow's global or op-level RNG state. Each draws its seed from
the example's `_seed` (split in two: one for the op, one left for the ops after it), which the
pipeline derives from (config.seed, process, dataset, position of the example in the stream).
The output is therefore a pure function of the example and its position: deterministic, and
exactly reproduced when a resumed pipeline skips to the same position.

Left/right: `flip_lr` mirrors frames but not the captions ("moving left", "top right" ...), so it is
off in every default string; use it only for data whose captions have no left/right.
"""
from __future__ import annotations

import ast
import inspect
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from videococa.errors import UserError

Example = dict[str, Any]
Op = Callable[[Example], Example]

SEED_KEY = "_seed"
_REGISTRY: dict[str, Callable[..., Op]] = {}
_NEEDS_TOKENIZER: set[str] = set()


def register(name: str, needs_tokenizer: bool = False):
  """Decorator registering an op factory under `name` (the name used in pp strings).

  With `needs_tokenizer`, the factory gets a `tokenizer=` keyword (`get_preprocess_fn`'s).
  """
  def decorator(factory):
    if name in _REGISTRY:
      raise ValueError(f"pp op {name!r} is registered twice.")
    _REGISTRY[name] = factory
    if needs_tokenizer:
      _NEEDS_TOKENIZER.add(name)
    return factory
  return decorator


def known_ops() -> list[str]:
  return sorted(_REGISTRY)


def _parse_op(spec: str, pp: str) -> tuple[str, tuple, dict]:
  """'name(1, k="v")' -> ('name', (1,), {'k': 'v'}); arguments must be Python literals."""
  try:
    node = ast.parse(spec.strip(), mode="eval").body
    if isinstance(node, ast.Name):
      return node.id, (), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
      raise SyntaxError("not a call 'name(...)'")
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"Cannot parse pp op {spec.strip()!r} in {pp!r} ({e}); write ops as "
                     "name or name(args) with literal arguments, separated by '|'.") from None
  return node.func.id, args, kwargs


def op_names(pp: str) -> list[str]:
  """The op names of a pp string, in order (parsed, not built)."""
  return [_parse_op(spec, pp)[0] for spec in pp.split("|") if spec.strip()]


def needs_tokenizer(pp: str) -> bool:
  return any(name in _NEEDS_TOKENIZER for name in op_names(pp))


def get_preprocess_fn(pp: str, tokenizer=None) -> Op:
  """Builds the composition of the ops of `pp` ('op1|op2(...)|...'), applied left to right.

  Args:
    pp: the pp string.
    tokenizer: a `videococa.data.tokenizer.Tokenizer`, needed by `tokenize`.

  Raises:
    ValueError: unknown op (the message lists the known ones), unparsable op, bad arguments, or
      `tokenize` without a tokenizer.
  """
  ops = []
  for spec in pp.split("|"):
    if not spec.strip():
      continue
    name, args, kwargs = _parse_op(spec, pp)
    if name not in _REGISTRY:
      raise UserError(f"Unknown pp op {name!r} in {pp!r}; known ops: {', '.join(known_ops())} "
                      "(a project's ops are registered by the modules in config.extensions).")
    factory = _REGISTRY[name]
    if name in _NEEDS_TOKENIZER:
      if tokenizer is None:
        raise ValueError(f"pp op {name!r} needs a tokenizer (config.input.tokenizer), got None.")
      kwargs = {**kwargs, "tokenizer": tokenizer}
    try:
      ops.append(factory(*args, **kwargs))
    except (TypeError, ValueError) as e:
      raise ValueError(f"Bad arguments for pp op {spec.strip()!r} in {pp!r}: {e}. Signature: "
                       f"{name}{inspect.signature(factory)}.") from None

  def preprocess(example: Example) -> Example:
    for op in ops:
      example = op(dict(example))
    return example
  return preprocess


# ----------------------------------------------------------------------------- Helpers.
def next_seed(example: Example) -> tf.Tensor:
  """A fresh int64 `[2]` stateless seed for one random op; advances `example[SEED_KEY]`."""
  if SEED_KEY not in example:
    raise KeyError(f"Random pp ops need the per-example seed example[{SEED_KEY!r}] (int64 [2]); "
                   "the videococa.data.pipeline iterators add it.")
  seed, example[SEED_KEY] = tf.unstack(tf.random.experimental.stateless_split(example[SEED_KEY]))
  return seed


def _clip_key(example: Example) -> str:
  """The clip an op works on: decoded `frames` if present, else the encoded `video`."""
  for key in ("frames", "video"):
    if key in example:
      return key
  raise KeyError(f"No clip in the example (keys {sorted(example)}): expected 'frames' or 'video'.")


def decode_frames(encoded: tf.Tensor) -> tf.Tensor:
  """string `[T]` JPEG/PNG frames -> uint8 `[T, H, W, 3]`; uint8 input is returned as is.

  A static T (e.g. after `sample_frames`) is unrolled into T decode ops, else `tf.map_fn`.
  """
  if encoded.dtype == tf.uint8:
    return encoded
  decode = decode_single
  num = encoded.shape[0]
  if num is not None:
    frames = tf.stack([decode(encoded[i]) for i in range(num)])
  else:
    frames = tf.map_fn(decode, encoded,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  frames.set_shape([num, None, None, 3])
  return frames


def decode_single(encoded: tf.Tensor) -> tf.Tensor:
  """string `[]` JPEG/PNG -> uint8 `[H, W, 3]`; uint8 input is returned as is.

  JPEGs use libjpeg's accurate integer DCT, as PIL does (bit-identical pixels); TensorFlow's
  default, the fast DCT, is up to 6 levels off.
  """
  if encoded.dtype == tf.uint8:
    return encoded
  image = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
  image.set_shape([None, None, 3])
  return image


def frame_indices(num_available: tf.Tensor, num_frames: int, mode: str,
                  seed: tf.Tensor | None = None) -> tf.Tensor:
  """int32 `[num_frames]` frame indices into a clip of `num_available` frames.

  The clip is cut into `num_frames` equal segments [i*T/n, (i+1)*T/n). 'uniform' takes the frame
  at each segment's centre, floor((i + 0.5) * T / n) (deterministic; eval). 'random_segment'
  takes one uniformly random frame per segment (TSN-style; training; needs `seed`). A clip shorter
  than `num_frames` repeats frames.
  """
  t = tf.cast(num_available, tf.int64)
  i = tf.range(num_frames, dtype=tf.int64)
  if mode == "uniform":
    return tf.cast((2 * i + 1) * t // (2 * num_frames), tf.int32)
  if mode == "random_segment":
    start = i * t // num_frames
    length = tf.maximum((i + 1) * t // num_frames - start, 1)
    u = tf.random.stateless_uniform([num_frames], seed=seed, dtype=tf.float64)
    offset = tf.minimum(tf.cast(u * tf.cast(length, tf.float64), tf.int64), length - 1)
    return tf.cast(start + offset, tf.int32)
  raise ValueError(f"sample_frames mode={mode!r}; choose 'uniform' or 'random_segment'.")


RESIZE_METHODS = ("bilinear", "bicubic")


def _check_method(method: str) -> None:
  if method not in RESIZE_METHODS:
    raise ValueError(f"method={method!r}; choose one of {RESIZE_METHODS}.")


def _resize_frames(frames: tf.Tensor, height, width, method: str = "bilinear",
                   antialias: bool = False) -> tf.Tensor:
  """Resize of `[T, H, W, C]`; uint8 in -> rounded uint8 out.

  `method='bicubic', antialias=True` is PIL's `Image.resize(..., BICUBIC)` (what open_clip's
  preprocessing uses) up to rounding: PIL rounds to uint8 between its horizontal and vertical
  passes, TensorFlow resizes in float (tests/test_openclip_e2e.py measures the gap).
  """
  out = tf.image.resize(frames, tf.stack([height, width]), method=method, antialias=antialias)
  if frames.dtype == tf.uint8:
    out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
  out.set_shape([frames.shape[0], tf.get_static_value(height), tf.get_static_value(width),
                 frames.shape[3]])
  return out


def _check_frames(example: Example, op: str) -> tf.Tensor:
  if "frames" not in example:
    raise KeyError(f"pp op {op!r} needs decoded 'frames' (keys: {sorted(example)}): put "
                   "decode_video / decode_image before it.")
  return example["frames"]


# ----------------------------------------------------------------------------- Ops.
@register("decode_video")
def get_decode_video(key: str = "video", out: str = "frames") -> Op:
  """Decodes `key` (string `[T]` frames) into `out` uint8 `[T, H, W, 3]`; drops `key`."""
  def fn(example):
    example[out] = decode_frames(example.pop(key))
    return example
  return fn


@register("decode_image")
def get_decode_image(key: str = "image", out: str = "frames") -> Op:
  """Decodes `key` (string `[]`) into a one-frame clip `out` uint8 `[1, H, W, 3]`; drops `key`."""
  def fn(example):
    example[out] = decode_single(example.pop(key))[None]
    return example
  return fn


@register("image_to_clip")
def get_image_to_clip(num_frames: int) -> Op:
  """`frames` `[1, H, W, 3]` -> a static clip `[num_frames, H, W, 3]` (the frame repeated)."""
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}.")

  def fn(example):
    frames = _check_frames(example, "image_to_clip")
    example["frames"] = tf.repeat(frames[:1], num_frames, axis=0)
    return example
  return fn


@register("sample_frames")
def get_sample_frames(num_frames: int, mode: str = "uniform") -> Op:
  """Keeps `num_frames` frames of the clip (`frames`, else the encoded `video`; see
  `frame_indices` for the modes). Before `decode_video` it selects which JPEGs get decoded."""
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
  if mode not in ("uniform", "random_segment"):
    raise ValueError(f"mode={mode!r}; choose 'uniform' or 'random_segment'.")

  def fn(example):
    key = _clip_key(example)
    seed = next_seed(example) if mode == "random_segment" else None
    clip = example[key]
    example[key] = tf.gather(clip, frame_indices(tf.shape(clip)[0], num_frames, mode, seed))
    return example
  return fn


@register("random_resized_crop")
def get_random_resized_crop(size: int, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3), method: str = "bilinear",
                            antialias: bool = False) -> Op:
  """Inception-style crop of `frames`, resized to `[T, size, size, 3]`; one crop for all frames.

  The crop covers a fraction in `scale` of the frame area with aspect ratio (w/h) in `ratio`
  (the whole frame if no such crop is found in 10 tries). Random crops move objects between
  positions: mind captions that name positions ("top left") when choosing `scale`. open_clip
  trains with `scale=(0.9, 1.0), method="bicubic", antialias=True`.
  """
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"scale={scale} must satisfy 0 < min <= max <= 1.")
  _check_method(method)

  def fn(example):
    frames = _check_frames(example, "random_resized_crop")
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(frames)[1:], bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=next_seed(example), min_object_covered=0.0, aspect_ratio_range=ratio,
        area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
    frames = frames[:, begin[0]:begin[0] + crop[0], begin[1]:begin[1] + crop[1]]
    example["frames"] = _resize_frames(frames, size, size, method, antialias)
    return example
  return fn


@register("resize")
def get_resize(size: int, crop: bool = True, method: str = "bilinear",
               antialias: bool = False) -> Op:
  """Deterministic resize of `frames` to `[T, size, size, 3]` (eval).

  crop=True: resize so that the short side is `size` (the long side becomes
  floor(size * long / short)), then take the central size x size crop (offsets rounded half to
  even): torchvision's `Resize(size)` + `CenterCrop(size)`, so `method="bicubic", antialias=True`
  is open_clip's evaluation preprocessing. crop=False: plain resize to size x size (distorts
  non-square frames).
  """
  _check_method(method)

  def fn(example):
    frames = _check_frames(example, "resize")
    if not crop:
      example["frames"] = _resize_frames(frames, size, size, method, antialias)
      return example
    hw = tf.cast(tf.shape(frames)[1:3], tf.float64)
    new_hw = tf.maximum(tf.cast(hw * size / tf.reduce_min(hw), tf.int32), size)
    frames = _resize_frames(frames, new_hw[0], new_hw[1], method, antialias)
    top, left = tf.unstack(tf.cast(tf.round(tf.cast(new_hw - size, tf.float32) / 2), tf.int32))
    frames = frames[:, top:top + size, left:left + size]
    frames.set_shape([frames.shape[0], size, size, frames.shape[3]])
    example["frames"] = frames
    return example
  return fn


@register("flip_lr")
def get_flip_lr(p: float = 0.5) -> Op:
  """Mirrors all frames of the clip left<->right with probability `p` (one draw per clip).

  Not in any default pp string: captions saying "left"/"right" (motions, positions) are NOT
  flipped, so this teaches the model the wrong words for mirrored clips.
  """
  def fn(example):
    frames = _check_frames(example, "flip_lr")
    flip = tf.random.stateless_uniform([], seed=next_seed(example)) < p
    example["frames"] = tf.cond(flip, lambda: tf.reverse(frames, [2]), lambda: frames)
    return example
  return fn


@register("value_range")
def get_value_range(vmin: float = -1.0, vmax: float = 1.0) -> Op:
  """uint8 `frames` [0, 255] -> float32 [vmin, vmax] (not used by default: see module doc)."""
  def fn(example):
    frames = tf.cast(_check_frames(example, "value_range"), tf.float32)
    example["frames"] = vmin + frames * ((vmax - vmin) / 255.0)
    return example
  return fn


@register("normalize")
def get_normalize(mean: tuple[float, float, float], std: tuple[float, float, float]) -> Op:
  """uint8 `frames` -> float32 `(frames / 255 - mean) / std` per RGB channel.

  Not needed with videococa models: they normalise uint8 frames with their config's
  `model.image_mean` / `image_std` (set from the checkpoint they start from); float frames are
  taken as already normalised. For other float consumers.
  """
  if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
    raise ValueError(f"mean={mean}, std={std}: give three values each, std > 0.")

  def fn(example):
    frames = tf.cast(_check_frames(example, "normalize"), tf.float32) / 255.0
    example["frames"] = (frames - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return example
  return fn


@register("choose_caption")
def get_choose_caption(key: str = "captions", out: str = "caption") -> Op:
  """One uniformly random reference caption: `key` string `[N]` (N >= 1) -> `out` string `[]`."""
  def fn(example):
    captions = example[key]
    num = tf.shape(captions, out_type=tf.int64)[0]
    with tf.control_dependencies([tf.debugging.assert_positive(
        num, message=f"choose_caption: an example has no '{key}'.")]):
      index = tf.random.stateless_uniform([], seed=next_seed(example), maxval=num, dtype=tf.int64)
    example[out] = captions[index]
    return example
  return fn


@register("tokenize", needs_tokenizer=True)
def get_tokenize(max_len: int, key: str = "caption", out: str = "text", *, tokenizer) -> Op:
  """SentencePiece-encodes `key` (string, any shape S) into `out` int32 `[*S, max_len]`.

  Each text becomes [BOS, tokens..., EOS, PAD(0)...], truncated to `max_len` (EOS kept). For
  training, `max_len` must be `config.model.max_len + 1`: the model reads text[:, :-1] (max_len
  input tokens) and predicts text[:, 1:]; the pipeline checks this.
  """
  if max_len < 2:
    raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}.")

  def encode(texts):
    texts = np.asarray(texts)  # A scalar arrives as bytes.
    return tokenizer.encode(texts.ravel().tolist(), max_len).reshape(texts.shape + (max_len,))

  def fn(example):
    texts = example[key]
    ids = tf.numpy_function(encode, [texts], tf.int32, stateful=False)
    ids.set_shape(texts.shape.concatenate([max_len]))
    example[out] = ids
    return example
  return fn


@register("keep")
def get_keep(*keys: str) -> Op:
  """Keeps only `keys` (and the private '_'-prefixed keys the pipeline uses, e.g. `_seed`)."""
  if not keys:
    raise ValueError("keep() needs at least one key.")

  def fn(example):
    missing = [k for k in keys if k not in example]
    if missing:
      raise KeyError(f"keep{keys}: no key(s) {missing} in the example (keys: {sorted(example)}).")
    return {k: v for k, v in example.items() if k in keys or k.startswith("_")}
  return fn
