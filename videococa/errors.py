"""User-facing errors: a `UserError` is a problem with what the user asked for (a config value, a
path, a checkpoint of another model, an empty dataset), not a bug: its message says what to change.
`videococa.cli.run` reports one as a single `error: <message>` line with exit status 2.

This module imports nothing of the project (and only the standard library).
"""
from __future__ import annotations

import re
import sys

EXIT_CODE = 2


class UserError(ValueError):
  """Bad input (config, flags, paths, data); the message says what to change.

  A ValueError, so `except ValueError` callers (and tests) keep working."""


class MissingPathError(UserError, FileNotFoundError):
  """A dataset, tokenizer, checkpoint or config path that does not exist."""


class ExistingPathError(UserError, FileExistsError):
  """An output path that already exists."""


def one_line(message: str) -> str:
  """The message on one line (newlines and indentation collapsed)."""
  return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def _close_progress_bars() -> None:
  """Closes open tqdm bars (if tqdm is in use) so that the error starts on its own line."""
  tqdm = sys.modules.get("tqdm")
  for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
    bar.close()


def exit_with(message: str, code: int = EXIT_CODE):
  """Prints `error: <message>` (one line, on a line of its own) to stderr and exits with `code`."""
  _close_progress_bars()
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(code)
