r"""Trains a model from an ml_collections config; resumes automatically from `--workdir`.

  python -m videococa.train --config=configs/coca.py:tiny --workdir=/tmp/w \
      [--config.total_steps=40 --config.mesh.fsdp=2 ...]

Writes TensorBoard events to `WORKDIR/tensorboard`, a JSON-lines copy to `WORKDIR/metrics.jsonl` and
orbax checkpoints to `WORKDIR/checkpoints` (every `config.checkpoint_every` steps and at the end,
keeping `config.keep_checkpoints`). Re-running the same command continues from the latest complete
checkpoint with the same step, optimizer state, RNG and data position.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import app, flags, logging
from ml_collections import config_flags

from videococa import checkpoint, evaluators, inputs, metric_writer, optim, sharding
from videococa import trainer as trainer_lib
from videococa.metric_writer import console



def define_flags() -> None:
  """`--config=FILE[:ARG]` (+ `--config.a.b=v` overrides) and `--workdir` (entry points only)."""
  config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")


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


def _initial_state(config, trainer, ckpt) -> tuple[trainer_lib.TrainState, bool]:
  """The latest checkpoint if there is one, else a fresh state (from `config.init_from` if set)."""
  latest = ckpt.latest_step()
  if latest is not None:
    state, _ = ckpt.restore(latest, trainer.abstract_state())
    console(f"Resuming from the checkpoint at step {latest} in {ckpt.directory}.")
    return state, True
  state = trainer.init_state()
  if config.get("init_from"):
    module = trainer_lib.load_model_module(config.model_name)
    params, report = module.load(jax.device_get(state.params), config.init_from, config.model)
    state = trainer.init_state(params=params)
    console(f"Initialised from {config.init_from}: {len(report['copied'])} parameters copied, "
            f"{len(report['resized'])} resized, {len(report['new'])} new, "
            f"{len(report['unused'])} unused.")
  else:
    console(f"Starting from scratch: no checkpoint in {ckpt.directory}.")
  return state, False


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) training to `config.total_steps`.

  Returns a summary: `start_step` (0, or the checkpoint step resumed from), `end_step`,
  `resumed` (bool), `preempted` (bool) and the last logged `metrics`.
  """
  mesh = sharding.make_mesh(config.mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 save_interval_steps=config.checkpoint_every,
                                 max_to_keep=config.keep_checkpoints)
  writer = metric_writer.MetricWriter(workdir)
  preemption = PreemptionSignal()
  try:
    trainer = trainer_lib.Trainer(config, mesh, optim.stage_of(config, ckpt.latest_step() or 0))
    state, resumed = _initial_state(config, trainer, ckpt)
    start = int(jax.device_get(state.step))
    summary = dict(start_step=start, end_step=start, resumed=resumed, preempted=False, metrics={})
    if start >= config.total_steps:
      console(f"Step {start} >= config.total_steps={config.total_steps}: nothing to do.")
      return summary
    summary.update(_train_loop(config, trainer, state, start, ckpt, writer, preemption, workdir))
    return summary
  finally:
    preemption.restore()
    ckpt.close()
    writer.close()


def _compile(trainer, batch) -> None:
  start = time.perf_counter()
  trainer.compile_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  console(f"Compiled the train step (stage {trainer.stage}) in {time.perf_counter() - start:.1f}s.")


def _train_loop(config, trainer, state, start, ckpt, writer, preemption, workdir) -> dict:
  """Steps from `start` to `config.total_steps`, logging and checkpointing; see `train`."""
  evals = evaluators.build_all(config, model=trainer.model, mesh=trainer.mesh, workdir=workdir)
  batches = inputs.make_train_iterator(config, trainer.mesh, start, workdir)
  first = next(batches)
  _compile(trainer, first)
  batches = itertools.chain([first], batches)
  progress = tqdm.tqdm(total=config.total_steps, initial=start, desc="train", unit="step",
                       disable=jax.process_index() != 0, dynamic_ncols=True,
                       mininterval=0.5 if sys.stderr.isatty() else 30)
  pending, previous_streak, metrics = [], None, {}
  tick, tick_step, step = time.perf_counter(), start, start
  for step in range(start + 1, config.total_steps + 1):
    batch = next(batches)
    if optim.stage_of(config, step) != trainer.stage:  # E.g. frozen -> fine-tuning.
      trainer = trainer_lib.Trainer(config, trainer.mesh, optim.stage_of(config, step))
      state = trainer.continue_from(state)
      _compile(trainer, batch)
    state, step_metrics = trainer.step(state, batch)
    pending.append(step_metrics)
    # Lagged check of the previous step's skip streak: that step is done, so this never stalls.
    if previous_streak is not None and int(previous_streak) > config.max_consecutive_nonfinite:
      raise RuntimeError(
          f"Stopping at step {step - 1}: more than config.max_consecutive_nonfinite="
          f"{config.max_consecutive_nonfinite} consecutive steps had a non-finite loss or gradient "
          f"(all skipped). The last good checkpoint in {ckpt.directory} is intact; lower the "
          "learning rate or check the data.")
    previous_streak = step_metrics["nonfinite_streak"]
    progress.update(1)
    if step % config.log_every == 0 or step == config.total_steps:
      now = time.perf_counter()
      metrics = _log_step(writer, progress, step, pending, now - tick, step - tick_step, trainer,
                          config)
      pending, tick, tick_step = [], time.perf_counter(), step
    due = evaluators.due(evals, step, config.total_steps)
    if due:
      progress.clear()
      evaluators.run_all(due, state.params, step, writer, workdir)
    meta = dict(step=step, global_batch=config.input.batch_size, seed=config.seed)
    final = preemption.requested or step == config.total_steps
    ckpt.save(step, state, meta, force=final)
    if preemption.requested:
      console(f"Preempted: checkpoint at step {step} written; exiting.")
      break
  progress.close()
  return dict(end_step=step, preempted=preemption.requested, metrics=metrics)


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO logs are noise at the terminal.
  train(flags.FLAGS.config, workdir)
  console(f"TensorBoard logs: {os.path.join(workdir, 'tensorboard')}\n"
          f"Checkpoints: {os.path.join(workdir, 'checkpoints')}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config"])
  app.run(main)
