"""Helpers for config files: `file.py:arg` parsing (big_vision's `parse_arg`, simplified), loading,
the `runlocal` shrink, and starting a recipe from a checkpoint's model and tokenizer."""
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
  config.checkpoint_every = 4
  config.optimizer.warmup_steps = 2


def import_config_file(path: str):
  """Imports the config file at `path` as a module (e.g. to reuse another recipe's helpers)."""
  if not os.path.exists(path):
    raise MissingPathError(f"Config file {path} does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"{e.filename or path}:{e.lineno}: syntax error: {e.msg}.") from None
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` the way `--config=` does (for tests and the main job)."""
  path, _, arg = spec.partition(":")
  return import_config_file(path).get_config(arg or None)


# Model fields that choose how the weights are computed with, not what they are: a recipe that
# starts from a checkpoint keeps its own values of these.
COMPUTE_FIELDS = ("dtype", "remat_policy", "attention_impl")


def init_from_checkpoint(config: ml_collections.ConfigDict, path: str, model: bool = True
                         ) -> dict:
  """Points `config` at checkpoint `path` (a training workdir or a `videococa.tools.convert`
  output): `config.init_from`, with `model` the model (`model_name`, `model` from the
  checkpoint's meta, keeping the recipe's `COMPUTE_FIELDS`; so the pixel normalisation
  `image_mean` / `image_std` comes along), and the tokenizer (the meta's, e.g. 'clip_bpe' for open_clip weights, else
  PATH/tokenizer.model). Returns the meta.
  """
  from videococa.train import checkpoint  # pylint: disable=g-import-not-at-top  (orbax)
  meta = checkpoint.read_meta(path)
  config.init_from = path
  if model and meta.get("model"):
    compute = {k: config.model[k] for k in COMPUTE_FIELDS if k in config.model}
    config.model_name = meta.get("model_name", config.model_name)
    config.model = ml_collections.ConfigDict({**meta["model"], **compute})
  tokenizer = meta.get("tokenizer")
  config.input.tokenizer = (tokenizer.format(workdir=path) if tokenizer
                            else os.path.join(path, "tokenizer.model"))
  config.input.tokenizer_vocab_size = 0  # Never retrain a tokenizer: its ids would not match.
  return meta
