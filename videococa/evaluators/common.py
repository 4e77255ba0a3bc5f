"""Shared machinery of the evaluators: config fields, sharded eval batches, jitted encoders.

An eval pass is one ordered pass over a split (`pipeline.make_eval_iterator`: each process reads its
own shard, `batch_size / process_count` examples per batch, the last batches padded and masked).
Each global batch is assembled on the mesh (`sharding.put_batch`, frames stay uint8 until they are
on the device), a jitted model function runs under the mesh, and its output is brought to the host
once per batch (`to_host`: every process gets the whole global batch). Padding rows are dropped on
the host, so every example is counted exactly once. Input shapes are fixed (the eval batch size,
the text batch size), so each jitted function compiles once per evaluator.

Row order of a global batch: process 0's local rows, then process 1's, ... (`put_batch` and
`gather` agree on it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from videococa.train import sharding

REQUIRED = object()  # Marks a config field without a default.
# Fields every evaluator config has: field -> default.
COMMON_FIELDS = dict(
    type=REQUIRED,  # 'classification', 'retrieval' or 'captioning'.
    every=0,  # Run every this many training steps; 0: only at the end of training.
    data=REQUIRED,  # dict(name=..., split=..., data_dir=None) or dict(dir=..., split=...).
    pp=REQUIRED,  # Eval pp string, e.g. 'sample_frames(8)|decode_video|resize(64)|keep(...)'.
    batch_size=REQUIRED,  # Global batch (all processes), a multiple of the data-parallel size.
)
IMAGES = "_images"  # Result key: {path relative to workdir/evals: uint8 [H, W, 3]}, saved as PNG.


def read_config(name: str, eval_config: Mapping[str, Any], fields: Mapping[str, Any]) -> dict:
  """`config.evals[name]` -> plain dict of COMMON_FIELDS + `fields`, defaults filled in.

  Raises ValueError naming `config.evals.{name}.{field}` for unknown or missing fields.
  """
  where = f"config.evals.{name}"
  cfg = eval_config.to_dict() if hasattr(eval_config, "to_dict") else dict(eval_config)
  allowed = {**COMMON_FIELDS, **fields}
  unknown = sorted(set(cfg) - set(allowed))
  if unknown:
    raise ValueError(f"{where} has unknown fields {unknown}; a {cfg.get('type')!r} evaluator "
                     f"takes {sorted(allowed)}.")
  missing = sorted(k for k, v in allowed.items() if v is REQUIRED and cfg.get(k) is None)
  if missing:
    raise ValueError(f"{where} needs {missing} (see videococa/evaluators/__init__.py).")
  out = {k: cfg.get(k, v) for k, v in allowed.items()}
  if not isinstance(out["every"], int) or out["every"] < 0:
    raise ValueError(f"{where}.every={out['every']!r}: give steps >= 0 (0: only at the end).")
  return out


def check_data(data: Mapping[str, Any], field: str) -> None:
  """Checks a data spec (dict(name=, split=, ...) or dict(dir=, split=)); errors name `field`."""
  from videococa.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  pipeline._check_keys(data, pipeline.DATA_KEYS, field)  # pylint: disable=protected-access


def gather(tree: Any) -> Any:
  """Global jax arrays (any sharding) or per-process numpy arrays `[local, ...]` -> numpy arrays
  on every process: the global array, resp. the concatenation over processes in process order."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def gather_objects(value: Any) -> list[Any]:
  """A JSON-serialisable value of each process -> [value of process 0, value of process 1, ...]."""
  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64), tiled=True)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = multihost_utils.process_allgather(padded)  # [processes, max_size]
  return [json.loads(row[:size].tobytes().decode("utf-8")) for row, size in zip(rows, sizes)]


def select(info: Mapping[str, Any], keep: np.ndarray) -> dict[str, Any]:
  """Rows `keep` (bool `[batch]`) of every array / list in `info`."""
  return {k: v[keep] if isinstance(v, np.ndarray) else [x for x, m in zip(v, keep) if m]
          for k, v in info.items()}


def concat(infos: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Concatenates the rows of several `info` dicts with the same keys."""
  if not infos:
    return {}
  return {k: np.concatenate([i[k] for i in infos]) if isinstance(infos[0][k], np.ndarray)
          else [x for i in infos for x in i[k]] for k in infos[0]}


@dataclasses.dataclass
class Batch:
  """One global eval batch.

  frames: uint8 `[batch, T, H, W, 3]` jax.Array, split over the mesh's batch axes.
  info: the pp's other keys for all `batch` rows (gathered from every process), plus `mask` bool
    `[batch]` (False: padding); numeric keys are numpy arrays, strings lists (`id`: list of str,
    `captions`: list of lists of str).
  local_frames: this process's uint8 frames `[batch / processes, T, H, W, 3]` (rows
    `process_index * batch / processes + [0, batch / processes)` of `frames`).
  """
  frames: jax.Array
  info: dict[str, Any]
  local_frames: np.ndarray


def eval_batches(data: Mapping[str, Any], pp: str, batch_size: int, mesh: jax.sharding.Mesh,
                 where: str) -> Iterator[Batch]:
  """One pass over `data` in global batches of `batch_size` (`where`: the config prefix for
  errors, e.g. 'config.evals.retrieval')."""
  from videococa.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  local = sharding.local_batch_size(batch_size, mesh, f"{where}.batch_size")
  for batch in pipeline.make_eval_iterator(dict(data), pp, local):
    if "frames" not in batch:
      raise ValueError(f"{where}.pp={pp!r} gives no 'frames': end the clip ops with a resize and "
                       "keep('frames', ...).")
    frames = batch.pop("frames")
    numeric = {k: v for k, v in batch.items() if isinstance(v, np.ndarray)}
    strings = {k: v for k, v in batch.items() if not isinstance(v, np.ndarray)}
    info = gather(numeric)
    per_process = gather_objects(strings)
    info.update({k: [x for p in per_process for x in p[k]] for k in strings})
    yield Batch(sharding.put_batch({"frames": frames}, mesh)["frames"], info, frames)


def encode_visual(model, params, frames):
  """`Model.encode_visual` on uint8 (or normalised float) frames `[batch, T, H, W, 3]`."""
  return model.apply({"params": params}, frames, method="encode_visual")


def _image_embedding(model, params, frames):
  return encode_visual(model, params, frames)[0]


def _text_embedding(model, params, tokens):
  return model.apply({"params": params}, tokens, method="encode_text")[0]


class Encoder:
  """CoCa's towers jitted for evaluation on `mesh` (one compilation per input shape).

  Texts are tokenized as in training: `tokenizer.encode(texts, model.max_len + 1)[:, :-1]` (the
  model reads the first `max_len` tokens of a [BOS, ..., EOS, PAD...] caption of `max_len + 1`).
  """

  def __init__(self, model, mesh: jax.sharding.Mesh, tokenizer, text_batch_size: int, where: str):
    self.model, self.mesh, self.tokenizer = model, mesh, tokenizer
    self.text_batch_size = text_batch_size
    self._local_text_batch = sharding.local_batch_size(text_batch_size, mesh,
                                                       f"{where}.text_batch_size")
    self._image = jax.jit(functools.partial(_image_embedding, model))
    self._text = jax.jit(functools.partial(_text_embedding, model))

  def image_embeddings(self, params, batches: Iterator[Batch]) -> tuple[np.ndarray, dict]:
    """A pass over `batches` -> (image_emb float32 `[num_examples, embed_dim]`, info of the same
    rows (padding dropped, see `Batch`))."""
    embeddings, infos = [], []
    for batch in batches:
      with sharding.use_mesh(self.mesh):
        emb = gather(self._image(params, batch.frames))
      keep = batch.info["mask"]
      embeddings.append(np.asarray(emb, np.float32)[keep])
      infos.append(select(batch.info, keep))
    return np.concatenate(embeddings), concat(infos)

  def text_embeddings(self, params, texts: Sequence[str]) -> np.ndarray:
    """`texts` (the same list on every process) -> text_emb float32 `[len(texts), embed_dim]`.

    Encoded in global batches of `text_batch_size` (the last one padded with empty texts).
    """
    if not texts:
      raise ValueError("No texts to encode.")
    size = self.text_batch_size
    padded = list(texts) + [""] * (-len(texts) % size)
    tokens = self.tokenizer.encode(padded, self.model.max_len + 1)[:, :-1]
    first = jax.process_index() * self._local_text_batch
    out = []
    for start in range(0, len(tokens), size):
      local = tokens[start + first:start + first + self._local_text_batch]
      with sharding.use_mesh(self.mesh):
        out.append(gather(self._text(params, sharding.put_batch({"t": local}, self.mesh)["t"])))
    return np.concatenate(out).astype(np.float32)[:len(texts)]


class Evaluator:
  """Base of the evaluators: `name`, `type`, `every`, `data`, and `run(params) -> dict`.

  Subclasses declare their own config fields (`FIELDS`: field -> default, `REQUIRED` for none)
  and implement `run`. `run` must be called on every process (it contains collectives); its
  result holds JSON-serialisable metrics and artifacts, plus optionally images under `IMAGES`.
  """
  FIELDS: dict[str, Any] = {}

  def __init__(self, name: str, eval_config: Mapping[str, Any], *, model, mesh, tokenizer):
    self.name = name
    self.where = f"config.evals.{name}"
    self.cfg = read_config(name, eval_config, self.FIELDS)
    self.type, self.every = self.cfg["type"], self.cfg["every"]
    self.data, self.pp = dict(self.cfg["data"]), self.cfg["pp"]
    self.batch_size = self.cfg["batch_size"]
    self.model, self.mesh, self.tokenizer = model, mesh, tokenizer
    sharding.local_batch_size(self.batch_size, mesh, f"{self.where}.batch_size")
    self._check_data()

  def _check_data(self) -> None:
    from videococa.data import preprocess  # pylint: disable=g-import-not-at-top
    check_data(self.data, f"{self.where}.data")
    if preprocess.needs_tokenizer(self.pp):
      raise ValueError(f"{self.where}.pp={self.pp!r} tokenizes: evaluators tokenize the captions "
                       "themselves; drop choose_caption/tokenize and keep('captions').")
    preprocess.get_preprocess_fn(self.pp)  # Parse errors now rather than at the first run.

  def batches(self) -> Iterator[Batch]:
    """One pass over the eval split (see `eval_batches`)."""
    return eval_batches(self.data, self.pp, self.batch_size, self.mesh, self.where)

  def make_encoder(self, text_batch_size: int | None = None) -> Encoder:
    """An `Encoder` for this evaluator's mesh (text batches default to `batch_size`)."""
    return Encoder(self.model, self.mesh, self.tokenizer, text_batch_size or self.batch_size,
                   self.where)

  def require(self, info: Mapping[str, Any], key: str) -> Any:
    """info[key], or an error telling to keep `key` in the pp."""
    if key not in info:
      raise ValueError(f"{self.where}.pp={self.pp!r} does not keep {key!r} (it gives "
                       f"{sorted(info)}): add it to keep(...).")
    return info[key]

  def run(self, params) -> dict:
    raise NotImplementedError
