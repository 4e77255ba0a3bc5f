"""Helpers for config files: `file.py:arg` parsing (big_vision's `parse_arg`, simplified)."""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from videococa.errors import MissingPathError, UserError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `'variant,key=value,flag'` into a ConfigDict over `defaults`.

  The first bare word is the variant (stored as `variant`); other bare words set booleans
  (`runlocal` -> True); `key=value` pairs are cast to the default's type.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  for i, token in enumerate(t.strip() for t in (arg or "").split(",") if t.strip()):
    key, sep, value = token.partition("=")
    if not sep:
      if i == 0 and "variant" in defaults:
        result.variant = key
        continue
      value = "True"
    if key not in defaults:
      raise UserError(f"Config argument {token!r}: unknown key {key!r}; known: {sorted(defaults)}.")
    kind = type(defaults[key])
    result[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return result


def shrink_for_local_run(config: ml_collections.ConfigDict, batch_size: int = 8) -> None:
  """The `runlocal` switch of a recipe: a few small steps that run anywhere."""
  config.input.batch_size = batch_size
  config.total_steps = 10
  config.log_every = 2
  config.checkpoint_every = 5
  config.optimizer.warmup_steps = 2


def import_config_file(path: str):
  """Imports the config file at `path` as a module (e.g. to reuse another recipe's helpers)."""
  if not os.path.exists(path):
    raise MissingPathError(f"Config file {path} does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` the way `--config=` does (for tests and the main job)."""
  path, _, arg = spec.partition(":")
  return import_config_file(path).get_config(arg or None)
