"""Optimizers (AdamW, Adafactor), learning-rate schedules, weight-decay masks and frozen sub-trees.

Adafactor (`name='adafactor'`) is CoCa's: factored second moments with decay
`min(b2, 1 - (t + 1)^-adafactor_decay_rate)` and `eps` added to the squared gradients (its eps1,
1e-30), update clipping at RMS 1, momentum `b1`. Weight decay is decoupled in the AdamW sense for
both optimizers: the update is
`-lr * (preconditioned_gradient + weight_decay * param)`, applied only where the mask allows.
Frozen parameters (regexes over '/'-joined paths) get no optimizer state and a zero update (and the
trainer computes no gradient for them).

Training modes (`config.training_mode`, VideoCoCa sec. 3.2): 'ft' trains everything; 'lit' freezes
the image encoder; 'frozen' trains only the poolers (and parameters new to video: temporal
embeddings, the temporal transformer, a token adapter); 'frozen_ft' is 'frozen' up to step
`config.frozen_ft_boundary`, then 'ft'. `config.optimizer.frozen` adds patterns to any mode.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from videococa.errors import UserError
from videococa.train import sharding


OPTIMIZERS = ("adamw", "adafactor")
DECAYS = ("cosine", "linear", "constant")


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
    raise UserError(f"config.optimizer.decay={cfg.decay!r}; choose one of {DECAYS}.")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def adafactor_beta2(cap: float):
  """Adafactor's second-moment decay at step t, `min(cap, 1 - (t + 1)^-exponent)`: the paper's
  increasing decay, capped at `cap` (`optimizer.b2`; CoCa's beta2 0.999, as in big_vision's
  `beta2_cap`). Signature of optax's `decay_rate_fn`."""
  def decay_rate(step, exponent):
    t = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(cap, 1.0 - t ** (-exponent))
  return decay_rate


def _base_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule,
                    decay_mask: Any) -> optax.GradientTransformation:
  if cfg.name == "adamw":
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask)
  if cfg.name == "adafactor":  # CoCa: factored second moments, momentum b1, decoupled decay.
    return optax.chain(
        optax.scale_by_factored_rms(decay_rate=cfg.adafactor_decay_rate, epsilon=cfg.eps,
                                    decay_rate_fn=adafactor_beta2(cfg.b2)),
        optax.clip_by_block_rms(1.0),
        optax.ema(cfg.b1, debias=False),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
    )
  raise UserError(f"config.optimizer.name={cfg.name!r}; choose one of {OPTIMIZERS}.")


FROZEN_PATTERNS = {
    "ft": (),
    "lit": (r"^visual/(?!temporal_embedding$)",),
    "frozen": (r"^(?!(pooling|image_proj|temporal_encoder|adapter)/|temporal_embedding$"
               r"|visual/temporal_embedding$)",),
}
TRAINING_MODES = ("ft", "lit", "frozen", "frozen_ft")


def stages(config: ml_collections.ConfigDict) -> list[tuple[int, tuple[str, ...]]]:
  """`[(first_step, frozen_patterns), ...]` of the training mode; steps count from 1."""
  mode = config.get("training_mode", "ft")
  extra = tuple(config.optimizer.get("frozen", ()))
  if mode not in TRAINING_MODES:
    raise UserError(f"config.training_mode={mode!r}; choose one of {TRAINING_MODES}.")
  if mode == "frozen_ft":
    boundary = config.get("frozen_ft_boundary", 0)
    if not 0 < boundary < config.total_steps:
      raise UserError(f"config.frozen_ft_boundary={boundary} must be between 0 and "
                      f"config.total_steps={config.total_steps}.")
    return [(1, FROZEN_PATTERNS["frozen"] + extra), (boundary + 1, extra)]
  return [(1, FROZEN_PATTERNS[mode] + extra)]


def stage_of(config: ml_collections.ConfigDict, step: int) -> int:
  """Index of the stage that runs (or ran) `step`; the state after step s belongs to stage_of(s)."""
  return max(i for i, (first, _) in enumerate(stages(config)) if first <= max(step, 1))


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int,
                   frozen: tuple[str, ...] = (), first_step: int = 1
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The update rule for `params` (a pytree, abstract values are fine) and its lr schedule;
  parameters matching a `frozen` pattern get no state and zero updates. `first_step` is the step
  (from 1) at which the optimizer state starts, e.g. a later training stage's: its schedule goes on
  from there instead of warming up again."""
  schedule = make_schedule(cfg, total_steps)
  stage_schedule = lambda count: schedule(count + (first_step - 1))  # noqa: E731
  paths = sharding.tree_paths(params)
  decay_mask = jax.tree.map(lambda p: not sharding.path_matches(p, cfg.wd_exclude), paths)
  tx = _base_optimizer(cfg, stage_schedule, decay_mask)
  if cfg.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  if frozen:
    labels = jax.tree.map(lambda p: "frozen" if sharding.path_matches(p, frozen) else "train", paths)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule


def is_frozen(frozen: tuple[str, ...], params: Any) -> Any:
  """Boolean tree: which parameters match a `frozen` pattern."""
  return jax.tree.map(lambda p: sharding.path_matches(p, frozen), sharding.tree_paths(params))
