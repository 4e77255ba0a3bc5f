r"""Trains a model from an ml_collections config; resumes automatically from `--workdir`.

  python -m videococa.train --config=configs/coca.py:tiny --workdir=/tmp/w \
      [--config.total_steps=40 --config.mesh.fsdp=2 ...]

Writes TensorBoard events to `WORKDIR/tensorboard`, a JSON-lines copy to `WORKDIR/metrics.jsonl` and
orbax checkpoints to `WORKDIR/checkpoints` (every `config.checkpoint_every` steps and at the end,
keeping `config.keep_checkpoints`). Re-running the same command continues from the latest complete
checkpoint with the same step, optimizer state, RNG and data position.
"""
from __future__ import annotations

import os
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from videococa import checkpoint, inputs, metric_writer, sharding, trainer as trainer_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")


class PreemptionSignal:
  """Turns SIGTERM (what preemptible VMs send) into a flag checked between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: finishing the current step, then checkpointing.")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _log_step(writer, progress, step, pending, elapsed, steps, trainer, config):
  """Averages the metrics of the last `steps` steps (one device->host transfer) and writes them."""
  history = jax.device_get(pending)
  metrics = {k: float(np.mean([m[k] for m in history])) for k in history[-1]}
  metrics["step_time_s"] = elapsed / steps
  metrics["samples_per_s"] = config.input.batch_size * steps / elapsed
  flops = trainer.flops_per_step()
  if flops:
    metrics["tflops_per_s_per_device"] = flops / metrics["step_time_s"] / 1e12
    peak = trainer_lib.peak_flops_per_device(config)
    if peak:
      metrics["mfu"] = flops / metrics["step_time_s"] / peak
  writer.write(step, metrics)
  progress.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
  return metrics


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training to `config.total_steps`; returns the last logged metrics."""
  mesh = sharding.make_mesh(config.mesh)
  trainer = trainer_lib.Trainer(config, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 save_interval_steps=config.checkpoint_every,
                                 max_to_keep=config.keep_checkpoints)
  writer = metric_writer.MetricWriter(workdir)
  preemption = PreemptionSignal()
  last_metrics: dict[str, float] = {}
  try:
    latest = ckpt.latest_step()
    if latest is not None:
      state, _ = ckpt.restore(latest, trainer.abstract_state())
      logging.info("Resuming from the checkpoint at step %d in %s.", latest, ckpt.directory)
    else:
      state = trainer.init_state()
      logging.info("Starting from scratch (no checkpoint in %s).", ckpt.directory)
    start = int(jax.device_get(state.step))
    if start >= config.total_steps:
      logging.info("Step %d >= config.total_steps=%d: nothing to do.", start, config.total_steps)
      return last_metrics
    batches = inputs.make_train_iterator(config, mesh, start, workdir)
    progress = tqdm.tqdm(total=config.total_steps, initial=start, desc="train", unit="step",
                         disable=jax.process_index() != 0, dynamic_ncols=True)
    pending, previous_streak = [], None
    tick, tick_step = time.perf_counter(), start
    for step in range(start + 1, config.total_steps + 1):
      state, metrics = trainer.step(state, next(batches))
      pending.append(metrics)
      # Lagged check of the previous step's skip streak: it is done by now, so this never stalls.
      if previous_streak is not None and int(previous_streak) > config.max_consecutive_nonfinite:
        raise RuntimeError(
            f"Stopping at step {step - 1}: more than config.max_consecutive_nonfinite="
            f"{config.max_consecutive_nonfinite} consecutive steps had a non-finite loss or "
            f"gradient (all skipped). The last good checkpoint in {ckpt.directory} is intact; "
            "lower the learning rate or check the data.")
      previous_streak = metrics["nonfinite_streak"]
      progress.update(1)
      if step % config.log_every == 0 or step == config.total_steps:
        now = time.perf_counter()
        last_metrics = _log_step(writer, progress, step, pending, now - tick, step - tick_step,
                                 trainer, config)
        pending, tick, tick_step = [], time.perf_counter(), step
      meta = dict(step=step, global_batch=config.input.batch_size, seed=config.seed)
      if preemption.requested or step == config.total_steps:
        ckpt.save(step, state, meta, force=True)
        if preemption.requested:
          logging.warning("Preempted: checkpoint at step %d written; exiting.", step)
          break
      else:
        ckpt.save(step, state, meta)
    progress.close()
  finally:
    preemption.restore()
    ckpt.close()
    writer.close()
  return last_metrics


def main(argv):
  del argv
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  train(_CONFIG.value, _WORKDIR.value)
  logging.info("TensorBoard logs: %s ; checkpoints: %s", os.path.join(_WORKDIR.value, "tensorboard"),
               os.path.join(_WORKDIR.value, "checkpoints"))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
