"""Model extension hooks that projects register: token adapters.

A token adapter is a flax Module class registered with `@register_token_adapter(name)`. With
`config.model.token_adapter = dict(name=NAME, **kwargs)` the CoCa model builds
`cls(patch_size=, ln_eps=, dtype=, **kwargs)` as its submodule `adapter`, calls it as
`adapter(input_tokens, frames)` on the ViT's input tokens `[batch, frames, tokens, width]` (patch +
position embeddings) and the normalised clip `[batch, frames, H, W, 3]`, and adds the result
`[batch, frames, tokens, width]` to the ViT's output tokens before the poolers. An adapter whose
output starts at zero keeps a converted image model exact at initialisation.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn

from videococa.errors import UserError

_TOKEN_ADAPTERS: dict[str, type[nn.Module]] = {}


def register_token_adapter(name: str):
  """Class decorator registering a token adapter under `name`."""
  def decorator(cls):
    if name in _TOKEN_ADAPTERS:
      raise ValueError(f"Token adapter {name!r} is registered twice.")
    _TOKEN_ADAPTERS[name] = cls
    return cls
  return decorator


def token_adapter(config: Mapping[str, Any], **common) -> nn.Module:
  """The adapter of `config` (`dict(name=..., **kwargs)`), built with `common` + kwargs."""
  kwargs = dict(config)
  name = kwargs.pop("name", None)
  if name not in _TOKEN_ADAPTERS:
    raise UserError(f"config.model.token_adapter.name={name!r} is not a registered token adapter "
                    f"(known: {sorted(_TOKEN_ADAPTERS)}); list the module that registers it in "
                    "config.extensions.")
  return _TOKEN_ADAPTERS[name](**common, **kwargs)
