r"""Decoding speed: captions/s of KV-cached vs uncached greedy decoding on this machine.

  python -m videococa.tools.bench_decoding [--batch_size=64] [--new_tokens=30] \
      [--preset=coca_tiny] [--max_len=32] [--repeats=10]

Random parameters (text side only: decoding never runs the visual towers) and random captioning
tokens; the preset's text context is raised to --max_len so that --new_tokens fit. EOS is disabled
so that every caption is exactly --new_tokens long. Each variant is compiled first (not timed),
then run --repeats times; the median time gives captions/s, printed with the cached/uncached ratio.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from videococa.models import coca, decoding, presets

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Captions per batch.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 30, "Tokens generated per caption.")
_PRESET = flags.DEFINE_string("preset", "coca_tiny", "Model preset (videococa/models/presets.py).")
_MAX_LEN = flags.DEFINE_integer("max_len", 32, "Text context of the model (>= --new_tokens).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed runs per variant.")


def _text_side(module: coca.Model, tokens, caption_tokens):
  return module.logits(module.decode(module.encode_text(tokens)[1], caption_tokens))


def _captions_per_second(fn: Callable, *args, repeats: int) -> float:
  """Compiles `fn` (untimed), then returns batch / median wall time over `repeats` runs."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tokens = jax.block_until_ready(compiled(*args))["tokens"]
    times.append(time.perf_counter() - start)
  return tokens.shape[0] / float(np.median(times))


def main(argv):
  del argv
  if _NEW_TOKENS.value > _MAX_LEN.value:
    raise app.UsageError(f"--new_tokens={_NEW_TOKENS.value} exceeds --max_len={_MAX_LEN.value}.")
  cfg = presets.get(_PRESET.value)
  cfg.max_len = _MAX_LEN.value
  model = coca.Model(**cfg)
  caption_tokens = jax.random.normal(
      jax.random.key(1), (_BATCH_SIZE.value, cfg.pooler.num_queries, cfg.pooler.width))
  params = jax.jit(functools.partial(model.init, method=_text_side))(
      jax.random.key(0), jnp.zeros((1, cfg.max_len), jnp.int32), caption_tokens[:1])
  params = nn.unbox(params["params"])
  options = dict(max_new_tokens=_NEW_TOKENS.value, eos_id=-1)  # No EOS: full-length captions.
  cached = _captions_per_second(functools.partial(decoding.generate, model, **options),
                                params, caption_tokens, repeats=_REPEATS.value)
  uncached = _captions_per_second(functools.partial(decoding.greedy_uncached, model, **options),
                                  params, caption_tokens, repeats=_REPEATS.value)
  print(f"{_PRESET.value} (max_len {cfg.max_len}), batch {_BATCH_SIZE.value}, "
        f"{_NEW_TOKENS.value} new tokens, greedy, {jax.devices()[0].device_kind}:")
  print(f"  cached:   {cached:10.1f} captions/s")
  print(f"  uncached: {uncached:10.1f} captions/s")
  print(f"  cached / uncached: {cached / uncached:.1f}x")


if __name__ == "__main__":
  app.run(main)
