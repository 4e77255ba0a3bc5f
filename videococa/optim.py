"""Optimizers (AdamW, Adafactor), learning-rate schedules, weight-decay masks and frozen sub-trees.

Weight decay is decoupled in the AdamW sense for both optimizers: the update is
`-lr * (preconditioned_gradient + weight_decay * param)`, applied only where the mask allows.
Frozen parameters (regexes over '/'-joined paths) get no optimizer state and a zero update.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from videococa import sharding


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `cfg.lr` over `cfg.warmup_steps`, then 'cosine' / 'linear' decay to
  `cfg.lr * cfg.end_factor` at `total_steps`, or 'constant'."""
  warmup = int(cfg.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  end = cfg.lr * cfg.end_factor
  if cfg.decay == "cosine":
    decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.end_factor)
  elif cfg.decay == "linear":
    decay = optax.linear_schedule(cfg.lr, end, decay_steps)
  elif cfg.decay == "constant":
    decay = optax.constant_schedule(cfg.lr)
  else:
    raise ValueError(f"config.optimizer.decay={cfg.decay!r}; choose 'cosine', 'linear' or 'constant'.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def _base_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
                    decay_mask: Any) -> optax.GradientTransformation:
  if cfg.name == "adamw":
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask)
  if cfg.name == "adafactor":  # CoCa: factored second moments, momentum b1, decoupled decay.
    return optax.chain(
        optax.scale_by_factored_rms(decay_rate=cfg.adafactor_decay_rate),
        optax.clip_by_block_rms(1.0),
        optax.ema(cfg.b1, debias=False),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
    )
  raise ValueError(f"config.optimizer.name={cfg.name!r}; choose 'adamw' or 'adafactor'.")


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The full update rule for `params` (a pytree, abstract values are fine) and its lr schedule."""
  schedule = make_schedule(cfg, total_steps)
  paths = sharding.tree_paths(params)
  decay_mask = jax.tree.map(lambda p: not sharding.path_matches(p, cfg.wd_exclude), paths)
  tx = _base_optimizer(cfg, schedule, decay_mask)
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  frozen = tuple(cfg.get("frozen", ()))
  if frozen:
    labels = jax.tree.map(lambda p: "frozen" if sharding.path_matches(p, frozen) else "train", paths)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def is_frozen(cfg: ml_collections.ConfigDict, params: Any) -> Any:
  """Boolean tree: which parameters `cfg.frozen` freezes."""
  frozen = tuple(cfg.get("frozen", ()))
  return jax.tree.map(lambda p: sharding.path_matches(p, frozen), sharding.tree_paths(params))
