"""Command-line entry points: `run(main)` replaces `absl.app.run(main)`.

A `UserError` (or a bad flag, e.g. an unknown `--config.` key, or a config file that fails to load)
then prints a single line `error: <message>` to stderr and exits with status 2, with no traceback.
Any other exception is a bug and keeps its traceback.

Imports only absl and the project's `errors` / `config_utils` (the ingestion tool must stay free of
JAX and TensorFlow).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Sequence

from absl import app, flags

from videococa import config_utils
from videococa.errors import exit_with, UserError


# ----------------------------------------------------------------------------- Config keys.
def config_keys(config: Any, prefix: str = "") -> list[str]:
  """Dotted paths of every field of a ConfigDict / dict, nested ones included ('model.vision')."""
  keys = []
  items = config.items() if hasattr(config, "items") else []
  for key, value in items:
    path = f"{prefix}{key}"
    keys.append(path)
    if hasattr(value, "items"):
      keys += config_keys(value, path + ".")
  return keys


def close_matches(key: str, keys: Sequence[str], n: int = 5) -> list[str]:
  """The known dotted `keys` most similar to `key`: those whose last name is close to its last
  name (a typo in the field), else those close as whole paths (a typo higher up)."""
  similarity = lambda k: difflib.SequenceMatcher(None, key, k).ratio()  # noqa: E731
  leaf = key.rsplit(".", 1)[-1]
  leaves = sorted({k.rsplit(".", 1)[-1] for k in keys})
  close_leaves = set(difflib.get_close_matches(leaf, leaves, n=n, cutoff=0.7))
  matches = sorted((k for k in keys if k.rsplit(".", 1)[-1] in close_leaves), key=similarity,
                   reverse=True)
  return (matches or difflib.get_close_matches(key, keys, n=n, cutoff=0.6))[:n]


def _missing_key(config: Any, path: str) -> str | None:
  """The longest prefix of dotted `path` that `config` lacks (None if the whole path exists)."""
  node = config
  parts = path.split(".")
  for i, part in enumerate(parts):
    if not hasattr(node, "items") or part not in node:
      return ".".join(parts[:i + 1])
    node = node[part]
  return None


def unknown_config_key_message(config: Any, overrides: Sequence[str], flag: str = "config"
                               ) -> str | None:
  """For `--config.a.b=v` overrides naming a key `config` does not have: what to write instead."""
  keys = config_keys(config)
  for override in overrides:
    path = override[len(f"--{flag}."):].split("=", 1)[0]
    missing = _missing_key(config, path)
    if missing is None:
      continue
    matches = close_matches(missing, keys)
    hint = (f"close matches: {', '.join(matches)}" if matches else
            f"the top-level keys are: {', '.join(k for k in keys if '.' not in k)}")
    return f"unknown config key {missing!r} in {override.split('=', 1)[0]}; {hint}"
  return None


def _config_file_flag() -> bool:
  """Whether --config is an ml_collections config file flag (train, evaluate)."""
  return "config" in flags.FLAGS and type(flags.FLAGS["config"].parser).__module__.startswith(
      "ml_collections")


def _config_load_error(spec: str) -> str | None:
  """The error of loading config `spec` ourselves (None if it loads)."""
  try:
    config_utils.load_config(spec)
  except Exception as e:  # pylint: disable=broad-except  # The config file's own error.
    return f"--config={spec}: {e}"
  return None


def _config_specs(argv: Sequence[str]) -> list[str]:
  """The values given to --config (`--config=SPEC` or `--config SPEC`)."""
  return [a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
          for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]


def _flag_error_message(error: Exception, argv: Sequence[str]) -> str:
  """One line for a failure while parsing the command line (`argv`)."""
  specs = _config_specs(argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  if specs and _config_file_flag():  # Load the config ourselves for a clear message.
    message = _config_load_error(specs[-1])
    if message:
      return message
    message = unknown_config_key_message(config_utils.load_config(specs[-1]), overrides)
    if message:
      return message
  message = str(error)
  if isinstance(error, (KeyError, AttributeError)):
    message = f"bad command-line override ({' '.join(overrides)}): {message}"
  # absl's messages may carry a traceback of the config file: keep the first and last lines.
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if len(lines) > 2 and any(line.startswith("Traceback") for line in lines):
    lines = [lines[0], lines[-1]]
  return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a one-line error and exit status 2 for bad flags (and config
  files that fail to load, which ml_collections would only report at first use)."""
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, SyntaxError) as e:
    exit_with(_flag_error_message(e, argv[1:]))
  if _config_file_flag() and type(flags.FLAGS["config"].value).__name__ == "_ErrorConfig":
    specs = _config_specs(argv[1:])
    error = flags.FLAGS["config"].value._error  # pylint: disable=protected-access
    exit_with((specs and _config_load_error(specs[-1])) or f"--config: {error}")
  return rest


# ----------------------------------------------------------------------------- Entry points.
def main_wrapper(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """`main` with `UserError` and `app.UsageError` turned into `error: ...` and exit status 2."""

  def wrapped(argv):
    try:
      return main(argv)
    except (UserError, app.UsageError) as e:
      exit_with(str(e))

  return wrapped


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)` for entry points: bad flags and user errors exit 2 with one line."""
  app.run(main_wrapper(main), flags_parser=parse_flags)
