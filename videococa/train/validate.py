"""Validation of a config before anything is created, traced or compiled.

`validate(config)` checks every field of `FIELDS` that the config has (ranges of numbers; choices
taken from the modules that own them) and every relation of `RELATIONS` whose fields it has, and
raises a `UserError` naming the field, its value and a valid one: one `error:` line, exit 2, in
well under a second, instead of a traceback after minutes of setup or compilation.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Sequence

import ml_collections

from videococa.errors import UserError
from videococa.models import layers, poolers, video
from videococa.train import optim, sharding

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Number:
  """A number in [low, high] (None: unbounded); `integer` requires an int; `open_low` excludes
  `low`."""
  low: float | None = None
  high: float | None = None
  integer: bool = False
  open_low: bool = False

  def problem(self, value) -> str | None:
    kind = int if self.integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
      return f"must be {'an integer' if self.integer else 'a number'}"
    if self.low is not None and (value <= self.low if self.open_low else value < self.low):
      return f"must be {'>' if self.open_low else '>='} {self.low}"
    if self.high is not None and value > self.high:
      return f"must be <= {self.high}"
    return None


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of `choices`."""
  choices: Sequence[Any]

  def problem(self, value) -> str | None:
    return None if value in self.choices else f"choose one of {list(self.choices)}"


POSITIVE = Number(1, integer=True)
NON_NEGATIVE = Number(0, integer=True)
FRACTION = Number(0.0, 1.0, open_low=False)

# Field path (under `config.`) -> rule. Choices come from the modules that implement them.
FIELDS: dict[str, Number | OneOf] = {
    "total_steps": POSITIVE,
    "log_every": POSITIVE,
    "checkpoint_every": POSITIVE,
    "keep_checkpoints": POSITIVE,
    "max_consecutive_nonfinite": POSITIVE,
    "seed": NON_NEGATIVE,
    "training_mode": OneOf(optim.TRAINING_MODES),
    "input.batch_size": POSITIVE,
    "input.num_frames": POSITIVE,
    "input.prefetch": NON_NEGATIVE,
    "optimizer.name": OneOf(optim.OPTIMIZERS),
    "optimizer.decay": OneOf(optim.DECAYS),
    "optimizer.lr": Number(0.0, open_low=True),
    "optimizer.warmup_steps": NON_NEGATIVE,
    "optimizer.b1": Number(0.0, 1.0),
    "optimizer.b2": Number(0.0, 1.0),
    "optimizer.eps": Number(0.0),
    "optimizer.weight_decay": Number(0.0),
    "optimizer.grad_clip_norm": Number(0.0),
    "optimizer.end_factor": FRACTION,
    "loss.contrastive_weight": Number(0.0),
    "loss.caption_weight": Number(0.0),
    "loss.label_smoothing": Number(0.0, 1.0),
    "loss.vocab_chunk_len": POSITIVE,
    "model.dtype": OneOf(("float32", "bfloat16", "float16")),
    "model.attention_impl": OneOf(layers.ATTENTION_IMPLS),
    "model.remat_policy": OneOf(tuple(layers.REMAT_POLICIES)),
    "model.mlp_act": OneOf(tuple(layers.ACTIVATIONS)),
    "model.embed_dim": POSITIVE,
    "model.vocab_size": Number(2, integer=True),
    "model.max_len": Number(2, integer=True),
    "model.vision.image_size": POSITIVE,
    "model.vision.patch_size": POSITIVE,
    "model.vision.width": POSITIVE,
    "model.vision.depth": POSITIVE,
    "model.vision.mlp_dim": POSITIVE,
    "model.vision.num_heads": POSITIVE,
    "model.pooler.mode": OneOf(poolers.POOLER_MODES),
    "model.pooler.num_queries": POSITIVE,
    "model.pooler.num_heads": POSITIVE,
    "model.text.width": POSITIVE,
    "model.text.depth": NON_NEGATIVE,
    "model.text.num_heads": POSITIVE,
    "model.decoder.depth": NON_NEGATIVE,
    "model.decoder.num_heads": POSITIVE,
    "model.video.variant": OneOf(video.VARIANTS),
    "model.video.num_frames": POSITIVE,
    "model.video.temporal_depth": POSITIVE,
}


def _get(config, path: str):
  node = config
  for key in path.split("."):
    if node is None or not hasattr(node, "get") or key not in node:
      return _MISSING
    node = node[key]
  return node


def _divides(divisor: str, total: str, what: str) -> Callable[[Any], str | None]:
  def check(config):
    d, t = _get(config, divisor), _get(config, total)
    if _MISSING in (d, t) or not all(isinstance(x, int) and x > 0 for x in (d, t)) or not t % d:
      return None
    return (f"config.{total}={t} is not divisible by config.{divisor}={d} ({what}); e.g. "
            f"--config.{divisor}={max(x for x in range(1, d + 1) if t % x == 0)}")
  return check


def _warmup_within_total(config):
  warmup, total = _get(config, "optimizer.warmup_steps"), _get(config, "total_steps")
  if _MISSING in (warmup, total) or warmup < total or warmup == 0:
    return None
  return (f"config.optimizer.warmup_steps={warmup} must be below config.total_steps={total}; "
          f"e.g. --config.optimizer.warmup_steps={total // 50}")


def _checkpoints_at_log_steps(config):
  every, log = _get(config, "checkpoint_every"), _get(config, "log_every")
  if _MISSING in (every, log) or every % log == 0:
    return None
  return (f"config.checkpoint_every={every} must be a multiple of config.log_every={log} "
          "(checkpoints are written at log steps); e.g. "
          f"--config.checkpoint_every={log * max(every // log, 1)}")


def _model_module(config):
  name = _get(config, "model_name")
  if name is _MISSING or (isinstance(name, str) and name.isidentifier()
                          and importlib.util.find_spec(f"videococa.models.{name}") is not None):
    return None
  return f"config.model_name={name!r} names no module videococa/models/NAME.py; e.g. 'coca'"


def _mesh(config):
  mesh = _get(config, "mesh")
  if mesh is _MISSING:
    return None
  unknown = sorted(set(mesh) - set(sharding.MESH_AXES))
  if unknown:
    return f"config.mesh has unknown axes {unknown}; the axes are {list(sharding.MESH_AXES)}"
  bad = {k: v for k, v in mesh.items() if not (isinstance(v, int) and (v >= 1 or v == -1))}
  if bad:
    return f"config.mesh={dict(mesh)}: axis sizes are integers >= 1, or -1 (the rest); got {bad}"
  return None


def _frames_within_table(config):
  frames, table = _get(config, "input.num_frames"), _get(config, "model.video.num_frames")
  variant = _get(config, "model.video.variant")
  temporal = (variant in ("joint_space_time", "factorized") or (
      variant == "attentional_pooler" and _get(config, "model.video.temporal_embedding")
      not in (_MISSING, None, False)))
  if not temporal or _MISSING in (frames, table) or frames <= table:
    return None
  return (f"config.input.num_frames={frames} exceeds config.model.video.num_frames={table} (the "
          f"length of the temporal embedding of the {variant!r} variant): raise "
          "config.model.video.num_frames or lower config.input.num_frames")


RELATIONS: tuple[Callable[[Any], str | None], ...] = (
    _frames_within_table,
    _divides("model.vision.patch_size", "model.vision.image_size", "patches tile the image"),
    _divides("model.vision.num_heads", "model.vision.width", "heads split the width"),
    _divides("model.text.num_heads", "model.text.width", "heads split the width"),
    _divides("model.decoder.num_heads", "model.text.width", "heads split the width"),
    _warmup_within_total,
    _checkpoints_at_log_steps,
    _model_module,
    _mesh,
)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `UserError` for the first field or relation of the config that is invalid."""
  for path, rule in FIELDS.items():
    value = _get(config, path)
    if value is _MISSING or value is None:
      continue
    problem = rule.problem(value)
    if problem:
      raise UserError(f"config.{path}={value!r} {problem}.")
  for relation in RELATIONS:
    problem = relation(config)
    if problem:
      raise UserError(f"{problem}.")
