r"""tf.data input pipelines: deterministic, resumable training batches and one-pass eval batches.

Training (`make_train_iterator`, used by `videococa.data.inputs` when config.input.source='tfds'):

  read this process's shard -> [cache] -> per-epoch seeded shuffle -> skip to the resume point
  -> number examples -> preprocess (pp string) -> [mixture] -> batch -> prefetch -> numpy

* Sharding: each process reads `tfds.split_for_jax_process(split)` (contiguous, disjoint, sizes
  differing by at most one), so processes never see each other's examples.
* Order: epoch e of a process is its shard shuffled with a buffer of `config.input.shuffle_buffer`
  records seeded by (config.seed, process, dataset, e). TFDS already stores the examples in a
  random (hash) order, so the buffer only has to decorrelate epochs. Files are read in a fixed
  order: the stream is a pure function of the seed.
* Augmentation: every random op takes its seed from the example's position in the stream (see
  `preprocess`), never from tf.data's internal RNG state.
* Resume: starting at step s skips s * local_batch positions: whole epochs arithmetically (free),
  then the rest of the current epoch as raw (undecoded) records. The cost is bounded by reading one
  epoch of raw records, independent of s and of the decoding work; batches after the skip equal
  those of an uninterrupted run bit for bit. Exactness needs the same seed, data config,
  local batch and number of processes.
* Mixture (`config.input.mixture`): position p of the mixed stream takes its next example from
  member `choice(p)`, a stateless categorical draw with the members' weights keyed by
  (seed, process, p) (`tf.data.Dataset.choose_from_datasets`). On resume the choices of the
  skipped positions are recounted (a tf.data reduction over chunks of `CHOICE_CHUNK` draws, ~6 s
  per 10^8 skipped positions on 2 CPUs) and each member skips its own count, so mixtures resume
  exactly too.
* `config.input.cache`: keeps this process's shard in memory with its frames *decoded* (all T
  frames, before any augmentation); memory N * T * H * W * 3 bytes per process. Batches are
  identical with and without it. The first epoch decodes every frame to fill the cache (also
  when a resume skips part of it).

Config (`config.input`; optional fields default to `DEFAULTS`):

  data = dict(name='shapes_video/video', split='train', data_dir=None)  # or dict(dir=, split=)
  pp = ('sample_frames(8, mode="random_segment")|decode_video|'
        'random_resized_crop(64, scale=(0.5, 1.0))|choose_caption|tokenize(65)|'
        'keep("frames", "text")')  # tokenize(config.model.max_len + 1)
  mixture = {}  # Or {key: dict(name=/dir=, split=, weight=, pp=)}: replaces data / pp.
  tokenizer = '{workdir}/tokenizer.model'  # Or 'clip_bpe' (open_clip's CLIP BPE).
  tokenizer_vocab_size = 0
  extra_texts = {}  # {key: K}: the pp also yields `key` int32 [K, len], len <= max_len + 1.
  shuffle_buffer, cache, prefetch, num_parallel_calls

Token layout: the pp string's `tokenize(L)` must produce L = config.model.max_len + 1 tokens
([BOS, ..., EOS, PAD...]): the model reads text[:, :-1] and predicts text[:, 1:].

Throughput: the train iterator logs the examples/s it delivers and the time spent waiting on
tf.data at INFO level every `THROUGHPUT_LOG_INTERVAL_S` seconds (`Throughput` below).

Eval (`make_eval_iterator`): one ordered pass over a split, sharded over processes, every batch
padded to the batch size with a boolean `mask`; every process yields the same number of batches.
"""
from __future__ import annotations

import math
import os
import re
import time
import uuid
from typing import Any, Iterable, Iterator, Mapping

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from videococa.data import datasets, preprocess, tokenizer as tokenizer_lib
from videococa.errors import MissingPathError, UserError

# Keep TensorFlow off accelerators: JAX owns them (a no-op with tensorflow-cpu).
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow's devices were initialised before this import: too late.
  logging.warning("TensorFlow was initialised before videococa.data.pipeline: it may see GPUs.")

AUTOTUNE = tf.data.AUTOTUNE
DEFAULTS = dict(
    shuffle_buffer=2_000,  # Raw records in each per-epoch shuffle buffer (<= 1: no shuffling).
    cache=False,  # Keep the decoded shard in memory.
    prefetch=2,  # Batches tf.data prepares ahead.
    num_parallel_calls=AUTOTUNE,  # Parallel preprocessing calls.
    tokenizer=None,  # SentencePiece .model path ('{workdir}' is replaced) or 'clip_bpe'.
    tokenizer_vocab_size=0,  # > 0: train a tokenizer of this size if `tokenizer` is missing.
    # {key: K}: text sets of K texts per example the pp yields as `key` (`negatives`: the
    # contrastive loss's hard negatives; others: read by loss terms, `config.loss.terms`).
    extra_texts={},
)
DATA_KEYS = ("name", "dir", "split", "data_dir", "config_overrides")
MEMBER_KEYS = DATA_KEYS + ("weight", "pp")
CHOICE_CHUNK = 4096  # Mixture choices are drawn (and counted on resume) in chunks of this size.
THROUGHPUT_LOG_INTERVAL_S = 60.0
_MAX_EPOCHS = 2 ** 62
_ENCODED = ("video", "image")  # Features read undecoded (decoded by the pp ops, or the cache).
# Last word of the seed keys: one independent seed per purpose.
_SHUFFLE, _AUGMENT, _MIXTURE = range(3)


def _input_field(config: ml_collections.ConfigDict, name: str):
  return config.input.get(name, DEFAULTS[name])


# ----------------------------------------------------------------------------- Data sources.
def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str):
  unknown = sorted(set(data) - set(allowed))
  if unknown:
    raise UserError(f"{where} has unknown keys {unknown}; allowed: {list(allowed)}.")
  if bool(data.get("name")) == bool(data.get("dir")):
    raise UserError(f"{where} needs exactly one of name= (a TFDS dataset, e.g. 'coco_captions', "
                    "or a builder under data/) and dir= (a prepared folder, e.g. from "
                    f"videococa.data.ingest); got {dict(data)}.")
  if not data.get("split"):
    raise UserError(f"{where} needs split= (e.g. 'train').")


def get_data_builder(data: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
  """The (prepared) builder of `data`: dict(name=, data_dir=, config_overrides=) or dict(dir=)."""
  if data.get("dir"):
    return datasets.get_builder_from_directory(data["dir"])
  return datasets.ensure_prepared(datasets.get_builder(
      data["name"], data.get("data_dir"), data.get("config_overrides")))


def _read(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
  """Records of `split` in storage order, `video`/`image` left encoded (string tensors)."""
  decoders = {k: tfds.decode.SkipDecoding() for k in _ENCODED if k in builder.info.features}
  return builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(try_autocache=False))


def _process_split(split: str, process_index: int | None = None):
  """This process's (or `process_index`'s) contiguous sub-split of `split`, as a TFDS split."""
  process_index = jax.process_index() if process_index is None else process_index
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=jax.process_count())


def _decode_encoded(example: dict) -> dict:
  """All frames of the encoded `video` / `image` decoded to uint8 (what the cache holds)."""
  example = dict(example)
  if "video" in example:
    example["video"] = preprocess.decode_frames(example["video"])
  if "image" in example:
    example["image"] = preprocess.decode_single(example["image"])
  return example


def _seed_pair(*keys: int) -> list[int]:
  """Two seed words derived from the non-negative ints `keys` (stable across runs)."""
  return [int(x) for x in np.random.SeedSequence(list(keys)).generate_state(2, np.uint32)]


def _strip_private(example: dict) -> dict:
  return {k: v for k, v in example.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- Training streams.
def _example_stream(builder, split: str, pp_fn, seed_keys: tuple[int, ...], start: int,
                    shuffle_buffer: int, cache: bool, num_parallel_calls) -> tf.data.Dataset:
  """Endless preprocessed examples of this process's shard of `split`, from position `start`.

  Position p is example p % N of epoch p // N (N: shard size); its pp seed is keyed by
  (`seed_keys`, p), so the stream from `start` is the tail of the stream from 0.
  """
  shard = _process_split(split)
  num = builder.info.splits[shard].num_examples
  if num == 0:
    raise UserError(f"Process {jax.process_index()} of {jax.process_count()} gets no examples "
                    f"of split {split!r} of {builder.info.full_name} (shard {shard!r}; the split "
                    f"has {builder.info.splits[split].num_examples}): the dataset is empty, or "
                    "smaller than the number of processes; check config.input.data.")
  records = _read(builder, shard)
  if cache:
    records = records.map(_decode_encoded, num_parallel_calls=num_parallel_calls).cache()
  shuffle_seed = tf.constant(_seed_pair(*seed_keys, _SHUFFLE), tf.int64)
  example_seed = tf.constant(_seed_pair(*seed_keys, _AUGMENT), tf.int64)

  def epoch(e):
    if shuffle_buffer <= 1:
      return records
    seed = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(
        shuffle_seed, e), minval=None, maxval=None, dtype=tf.int64)
    return records.shuffle(min(shuffle_buffer, num), seed=seed)

  def process(position, example):
    example = {**example, preprocess.SEED_KEY: tf.random.experimental.stateless_fold_in(
        example_seed, position)}
    return _strip_private(pp_fn(example))

  first_epoch, offset = divmod(start, num)
  ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch)
  ds = ds.skip(offset).enumerate(start)
  return ds.map(process, num_parallel_calls=num_parallel_calls, deterministic=True)


def _choices(logits: tf.Tensor, seed: tf.Tensor, chunk: tf.Tensor) -> tf.Tensor:
  """int64 `[CHOICE_CHUNK]` member indices of mixture positions chunk * CHOICE_CHUNK + [0, C)."""
  return tf.random.stateless_categorical(
      logits[None], CHOICE_CHUNK, tf.random.experimental.stateless_fold_in(seed, chunk))[0]


def mixture_counts(weights: list[float], seed: list[int], num_positions: int) -> np.ndarray:
  """int64 `[len(weights)]`: how often each member is chosen in positions [0, num_positions)."""
  logits = tf.math.log(tf.constant(weights, tf.float64))
  seed = tf.constant(seed, tf.int64)
  k = len(weights)
  bincount = lambda x: tf.math.bincount(tf.cast(x, tf.int32), minlength=k, maxlength=k,  # noqa
                                        dtype=tf.int64)
  full, rest = divmod(num_positions, CHOICE_CHUNK)
  counts = tf.data.Dataset.range(full).map(
      lambda c: bincount(_choices(logits, seed, c)), num_parallel_calls=AUTOTUNE).reduce(
          tf.zeros([k], tf.int64), lambda a, b: a + b)
  counts += bincount(_choices(logits, seed, tf.constant(full, tf.int64))[:rest])
  return counts.numpy()


def _choice_stream(weights: list[float], seed: list[int], start: int) -> tf.data.Dataset:
  """Member indices (int64 scalars) of mixture positions start, start + 1, ..."""
  logits = tf.math.log(tf.constant(weights, tf.float64))
  seed = tf.constant(seed, tf.int64)
  first_chunk, offset = divmod(start, CHOICE_CHUNK)
  ds = tf.data.Dataset.range(first_chunk, _MAX_EPOCHS).map(lambda c: _choices(logits, seed, c))
  return ds.unbatch().skip(offset)


def _members(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """{key: dict(data..., weight, pp)}: config.input.mixture, else the single config.input.data."""
  mixture = config.input.get("mixture") or {}
  if not mixture:
    if not config.input.get("data") or not config.input.get("pp"):
      raise UserError("config.input.source='tfds' needs config.input.data=dict(name=..., "
                      "split=...) and config.input.pp (or a non-empty config.input.mixture).")
    member = dict(config.input.data)
    _check_keys(member, DATA_KEYS, "config.input.data")
    return {"data": dict(member, weight=1.0, pp=config.input.pp)}
  members = {}
  for key in sorted(mixture):
    member = dict(mixture[key])
    _check_keys(member, MEMBER_KEYS, f"config.input.mixture.{key}")
    if not member.get("pp") or not member.get("weight", 0) > 0:
      raise UserError(f"config.input.mixture.{key} needs pp= (a pp string) and weight= > 0; got "
                      f"{member}.")
    members[key] = member
  return members


def _check_output(spec: Mapping[str, tf.TensorSpec], expected: Mapping[str, tuple],
                  where: str):
  """Checks that the pp output has `frames` / `text` of the shapes the model is built for."""
  for key, (shape, dtype) in expected.items():
    got = spec.get(key)
    matches = got is not None and got.shape.rank == len(shape) and all(
        want is None or have == want for have, want in zip(got.shape.as_list(), shape))
    if not matches or got.dtype != dtype:
      got_str = "nothing" if got is None else f"{got.shape.as_list()} {got.dtype.name}"
      raise UserError(
          f"{where} gives {key!r}: {got_str}, but the model needs {list(shape)} {dtype.name}. "
          "frames: end the clip ops with sample_frames(T) or image_to_clip(T) (T = "
          "config.input.num_frames) and random_resized_crop(S) or resize(S) (S = "
          "config.model.vision.image_size); text: tokenize(config.model.max_len + 1); "
          "each text set of config.input.extra_texts ({key: K}): K texts tokenized to [K, len <= "
          "config.model.max_len + 1]; and keep them with keep('frames', 'text', ...).")


def train_dataset(config: ml_collections.ConfigDict, local_batch: int, start_step: int,
                  tokenizer=None, extra_keys: tuple[str, ...] = ()) -> tf.data.Dataset:
  """Per-process training batches from `start_step` on (see the module docstring).

  Returns a dataset of {'frames': uint8 [local_batch, T, S, S, 3],
  'text': int32 [local_batch, config.model.max_len + 1]}, plus for each `key: K` of
  `config.input.extra_texts` `key`: int32 [local_batch, K, len], plus `extra_keys` (e.g. 'id',
  for inspection; the pp must keep them).
  """
  shuffle_buffer = _input_field(config, "shuffle_buffer")
  cache = _input_field(config, "cache")
  parallel = _input_field(config, "num_parallel_calls")
  members = _members(config)
  size = config.model.vision.image_size
  expected = {"frames": ((config.input.num_frames, size, size, 3), tf.uint8),
              "text": ((config.model.max_len + 1,), tf.int32)}
  for key, num_texts in _input_field(config, "extra_texts").items():
    expected[key] = ((num_texts, None), tf.int32)
  start = start_step * local_batch
  weights = [float(m["weight"]) for m in members.values()]
  mix_seed = _seed_pair(config.seed, jax.process_index(), _MIXTURE)
  counts = mixture_counts(weights, mix_seed, start) if len(members) > 1 else [start]
  streams = []
  for index, ((key, member), skip) in enumerate(zip(members.items(), counts)):
    field = "config.input.pp" if len(members) == 1 else f"config.input.mixture.{key}.pp"
    where = f"{field} ({member['pp']!r})"
    pp_fn = preprocess.get_preprocess_fn(member["pp"], tokenizer)
    stream = _example_stream(get_data_builder(member), member["split"], pp_fn,
                             (config.seed, jax.process_index(), index), int(skip),
                             shuffle_buffer, cache, parallel)
    _check_output(stream.element_spec, expected, where)
    streams.append(stream.map(lambda ex: {k: ex[k] for k in (*expected, *extra_keys)}))
  if len(streams) == 1:
    ds = streams[0]
  else:
    ds = tf.data.Dataset.choose_from_datasets(streams, _choice_stream(weights, mix_seed, start))
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(_input_field(config, "prefetch"))
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


# ----------------------------------------------------------------------------- Tokenizer.
def _member_captions(members: Iterable[dict]) -> Iterator[str]:
  for member in members:
    yield from tokenizer_lib.captions_from_builder(get_data_builder(member), member["split"])


def get_tokenizer(config: ml_collections.ConfigDict, workdir: str):
  """The training tokenizer config.input.tokenizer ('{workdir}' replaced): 'clip_bpe' (CLIP's
  BPE, open_clip's ids), the path of a CLIP 'bpe_simple_vocab_16e6.txt.gz', or the path of a
  SentencePiece '.model' (see `tokenizer_lib.load`).

  If a SentencePiece file is missing and config.input.tokenizer_vocab_size > 0, trains one on the
  captions of every training dataset and writes it atomically (concurrent processes write
  identical bytes).
  """
  template = _input_field(config, "tokenizer")
  if not template:
    raise UserError("config.input.pp tokenizes captions but config.input.tokenizer is not set: "
                    "give the path of a SentencePiece .model (may contain '{workdir}') or "
                    "'clip_bpe'.")
  path = os.path.expanduser(template.format(workdir=workdir))
  if not tokenizer_lib.is_clip_bpe(path) and not os.path.isfile(path):
    if not path.endswith(".model"):
      raise UserError(f"config.input.tokenizer={template!r} must be 'clip_bpe', a CLIP "
                      "vocabulary '*.txt.gz' or a SentencePiece '*.model' path.")
    vocab_size = _input_field(config, "tokenizer_vocab_size")
    if not vocab_size > 0:
      raise MissingPathError(
          f"No tokenizer at {path} (config.input.tokenizer). Create it with `python -m "
          f"videococa.data.tokenizer --dataset=NAME --vocab_size=N --out={path[:-6]}`, or set "
          "config.input.tokenizer_vocab_size=N to train one from the training captions.")
    logging.info("Training a %d-piece tokenizer on the training captions -> %s", vocab_size, path)
    tmp_prefix = f"{path[:-6]}.tmp-{uuid.uuid4().hex}"
    os.replace(tokenizer_lib.train(_member_captions(_members(config).values()), vocab_size,
                                   tmp_prefix), path)
  tok = tokenizer_lib.load(path)
  if tok.vocab_size > config.model.vocab_size:
    raise UserError(f"Tokenizer {path} has {tok.vocab_size} pieces but config.model.vocab_size="
                    f"{config.model.vocab_size}: raise the model's vocab_size or use a smaller "
                    "tokenizer.")
  return tok


# ----------------------------------------------------------------------------- Iterators.
class Throughput:
  """Counts the examples an iterator yields; logs examples/s and tf.data waiting time.

  `examples_per_s` is the rate over the last interval (what the consumer got); `wait_ms` the mean
  time a `next()` spent blocked in tf.data (near 0 when the pipeline keeps up).
  """

  def __init__(self, interval_s: float = THROUGHPUT_LOG_INTERVAL_S):
    self.interval_s = interval_s
    self.examples_per_s = self.wait_ms = float("nan")
    self._reset(time.perf_counter())

  def _reset(self, now: float):
    self._start, self._examples, self._batches, self._wait = now, 0, 0, 0.0

  def wrap(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    iterator = iter(batches)
    while True:
      tick = time.perf_counter()
      try:
        batch = next(iterator)
      except StopIteration:
        return
      now = time.perf_counter()
      self._wait += now - tick
      self._batches += 1
      self._examples += len(next(iter(batch.values())))
      if now - self._start >= self.interval_s:
        self.examples_per_s = self._examples / (now - self._start)
        self.wait_ms = 1e3 * self._wait / self._batches
        logging.info("Input pipeline: %.1f examples/s, %.1f ms/batch waiting for tf.data.",
                     self.examples_per_s, self.wait_ms)
        self._reset(now)
      yield batch


def make_train_iterator(config: ml_collections.ConfigDict, local_batch: int, start_step: int,
                        workdir: str) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process numpy training batches, the first one for step `start_step`.

  Yields {'frames': uint8 [local_batch, T, S, S, 3], 'text': int32 [local_batch, max_len + 1]}
  with T = config.input.num_frames, S = config.model.vision.image_size, max_len =
  config.model.max_len. Reads config.seed, config.input.{data, pp, mixture, shuffle_buffer, cache,
  prefetch, num_parallel_calls, tokenizer, tokenizer_vocab_size} (defaults: `DEFAULTS`).
  """
  members = _members(config)
  tok = None
  if any(preprocess.needs_tokenizer(m["pp"]) for m in members.values()):
    tok = get_tokenizer(config, workdir)
  ds = train_dataset(config, local_batch, start_step, tok)
  return Throughput().wrap(_user_errors(ds.as_numpy_iterator(), members))


def _user_errors(batches: Iterator[dict[str, np.ndarray]], members: Mapping[str, dict]
                 ) -> Iterator[dict[str, np.ndarray]]:
  """`batches`, with unreadable (corrupt) dataset files reported as a `UserError`."""
  try:
    yield from batches
  except tf.errors.DataLossError as e:
    sources = ", ".join(str(m.get("dir") or m.get("name")) for m in members.values())
    reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message.splitlines()[0]).strip()
    raise UserError(f"Corrupt training data in {sources}: {reason}; rebuild or re-ingest the "
                    "dataset.") from e


def count_examples(data: Mapping[str, Any]) -> int:
  """Number of examples of data['split'] (all processes together)."""
  _check_keys(data, DATA_KEYS, "data")
  return get_data_builder(data).info.splits[data["split"]].num_examples


def _to_numpy(value) -> Any:
  """A batched tensor (or dict of them) -> numpy; strings -> list of str (rank 1) or list of
  lists of str with the '' padding dropped (rank 2)."""
  if isinstance(value, dict):
    return {k: _to_numpy(v) for k, v in value.items()}
  array = value.numpy()
  if value.dtype != tf.string:
    return array
  if array.ndim == 1:
    return [s.decode("utf-8") for s in array]
  return [[s.decode("utf-8") for s in row if s] for row in array]


def _pad(value, batch_size: int):
  """Pads a numpy batch with zeros, a string list with '' or [], to `batch_size` rows."""
  if isinstance(value, dict):
    return {k: _pad(v, batch_size) for k, v in value.items()}
  missing = batch_size - len(value)
  if isinstance(value, list):
    return value + [[] if value and isinstance(value[0], list) else ""] * missing
  return np.pad(value, [(0, missing)] + [(0, 0)] * (value.ndim - 1))


def _empty_batch(spec, batch_size: int):
  """An all-padding batch shaped like the batched `spec` (unknown dims -> 0)."""
  if isinstance(spec, dict):
    return {k: _empty_batch(s, batch_size) for k, s in spec.items()}
  if spec.dtype == tf.string:
    return [[] if spec.shape.rank > 1 else ""] * batch_size
  return np.zeros([batch_size] + [d or 0 for d in spec.shape.as_list()[1:]],
                  spec.dtype.as_numpy_dtype)


def make_eval_iterator(data: Mapping[str, Any], pp: str, batch_size: int, tokenizer=None,
                       num_frames: int | None = None,
                       num_parallel_calls=AUTOTUNE) -> Iterator[dict[str, Any]]:
  """One pass, in storage order, over this process's shard of data["split"], in padded batches.

  Args:
    data: dict(name=..., split=..., data_dir=None) or dict(dir=..., split=...).
    pp: eval pp string, e.g. 'sample_frames(8)|decode_video|resize(64)|keep("frames", "id",
      "captions", "label")'. Random ops are seeded by the example's index (deterministic).
    batch_size: examples per batch for this process.
    tokenizer: for pp strings with `tokenize`.
    num_frames: if given, checks that `frames` has this many frames.
    num_parallel_calls: parallel preprocessing calls.

  Yields:
    The pp's keys, batched to `batch_size` rows: numeric arrays (e.g. frames uint8
    [batch_size, T, S, S, 3], label int64 [batch_size]) zero-padded; strings as lists of str
    (`id`: [batch_size]; `captions`: per example the list of its captions, [] for padding);
    plus `mask` bool [batch_size], True for real examples. Every process yields
    ceil(max shard size / batch_size) batches (extra ones fully masked), so multi-process
    evaluators stay in step. Each example appears in exactly one batch of one process.
  """
  _check_keys(data, DATA_KEYS, "data")
  builder = get_data_builder(data)
  shard_sizes = [builder.info.splits[_process_split(data["split"], i)].num_examples
                 for i in range(jax.process_count())]
  num_batches = math.ceil(max(shard_sizes) / batch_size)
  pp_fn = preprocess.get_preprocess_fn(pp, tokenizer)
  seed = tf.constant(_seed_pair(0), tf.int64)

  def process(index, example):
    example = {**example, preprocess.SEED_KEY: tf.random.experimental.stateless_fold_in(
        seed, index)}
    return _strip_private(pp_fn(example))

  ds = _read(builder, _process_split(data["split"])).enumerate().map(
      process, num_parallel_calls=num_parallel_calls, deterministic=True)
  frames = ds.element_spec.get("frames")
  if num_frames is not None and frames is not None and frames.shape[0] != num_frames:
    raise UserError(f"Eval pp {pp!r} gives frames {frames.shape.as_list()}, expected "
                    f"{num_frames} frames: use sample_frames({num_frames}) / "
                    f"image_to_clip({num_frames}).")
  ds = ds.padded_batch(batch_size).prefetch(2)
  produced = 0
  for batch in ds:
    real = int(tf.shape(tf.nest.flatten(batch)[0])[0])
    batch = _pad(_to_numpy(batch), batch_size)
    batch["mask"] = np.arange(batch_size) < real
    produced += 1
    yield batch
  for _ in range(num_batches - produced):
    batch = _empty_batch(ds.element_spec, batch_size)
    batch["mask"] = np.zeros(batch_size, bool)
    yield batch
