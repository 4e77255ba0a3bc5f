"""Projects plug into the core through registration points; `config.extensions` lists the modules
that fill them, and `load(config)` imports those modules before a model, input pipeline or loss is
built. The registration points:

  videococa.data.preprocess.register(name)         a pp op usable in pp strings;
  videococa.train.losses.register_term(name)       an extra loss term (`config.loss.terms`);
  videococa.models.hooks.register_token_adapter(name)  a model hook (`config.model.token_adapter`).

The core never imports a project: a project is named only as a string in a config, e.g.
`config.extensions = ("videococa.projects.shapes.pp_ops", "videococa.projects.shapes.losses")`
(big_vision's `pp_modules`, for every kind of registration).
"""
from __future__ import annotations

import importlib
from typing import Any

from videococa.errors import UserError


def load(config: Any) -> None:
  """Imports every module of `config.extensions` (a no-op for modules already imported)."""
  for name in config.get("extensions", ()) or ():
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name and name.startswith(e.name):
        raise UserError(f"config.extensions names {name!r}, which is not an importable module; "
                        "fix the name (e.g. 'videococa.projects.shapes.pp_ops').") from e
      raise  # A missing dependency of an existing module: a real error.
