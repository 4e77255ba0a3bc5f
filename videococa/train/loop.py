r"""Trains a model from an ml_collections config; resumes automatically from `--workdir`.

  python -m videococa.train --config=configs/coca.py:tiny --workdir=/tmp/w \
      [--config.total_steps=40 --config.mesh.fsdp=2 ...] \
      [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]  # multi-process

Writes TensorBoard events to `WORKDIR/tensorboard`, a JSON-lines copy to `WORKDIR/metrics.jsonl` and
orbax checkpoints to `WORKDIR/checkpoints` (every `config.checkpoint_every` steps and at the end,
keeping `config.keep_checkpoints`). Re-running the same command continues from the latest complete
checkpoint with the same step, optimizer state, RNG and data position.

Fault tolerance (docs/fault_tolerance.md): SIGTERM stops after the current step with a
checkpoint and exit status 0 (multi-process: all processes stop at the same step); a killed run
resumes exactly; non-finite steps are skipped and counted, and `config.max_consecutive_nonfinite`
of them in a row stop the run. Bad input (config, paths, checkpoint of another model) exits with
status 2 and a one-line `error: ...`.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import numpy as np
import tqdm
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from videococa import errors, evaluators, extensions
from videococa.data import inputs
from videococa.train import checkpoint, distributed, metric_writer, optim, sharding, validate
from videococa.train import trainer as trainer_lib
from videococa.train.metric_writer import console



def define_flags() -> None:
  """`--config=FILE[:ARG]` (+ `--config.a.b=v` overrides) and `--workdir` (entry points only)."""
  config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
  distributed.define_flags()


class NonFiniteError(errors.UserError, RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class PreemptionSignal:
  """SIGTERM (what preemptible VMs send) -> stop after the current step, checked between steps.

  One process: a Python SIGTERM handler sets `requested`. Several processes: JAX's preemption
  service (started by `jax.distributed.initialize`, it owns SIGTERM) spreads a SIGTERM received by
  any process to all of them and picks a step at which they all stop
  (`multihost_utils.reached_preemption_sync_point`), so they write the same checkpoint.
  """

  def __init__(self):
    self.requested = False
    self._multi_process = jax.process_count() > 1
    self._previous = None
    if not self._multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: finishing the current step, then checkpointing.")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; call it once per step, on every process."""
    if self._multi_process and not self.requested:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _log_step(writer, progress, step, history, elapsed, steps, trainer, config):
  """Averages the metrics `history` (on the host) of the last `steps` steps and writes them."""
  # In float64: the same value whether a step's metric is a float32 array or (carried over a
  # preemption in the checkpoint meta) a Python float.
  metrics = {k: float(np.mean(np.asarray([m[k] for m in history], np.float64)))
             for k in history[-1]}
  metrics["step_time_s"] = elapsed / steps
  metrics["samples_per_s"] = config.input.batch_size * steps / elapsed
  flops = trainer.flops_per_step()
  if flops:
    metrics["tflops_per_s_per_device"] = flops["model"] / metrics["step_time_s"] / 1e12
    peak = trainer_lib.peak_flops_per_device(config)
    if peak:
      metrics["mfu"] = flops["model"] / metrics["step_time_s"] / peak
      metrics["hfu"] = flops["hardware"] / metrics["step_time_s"] / peak
  writer.write(step, metrics)
  progress.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
  return metrics


def _initial_state(config, trainer, ckpt) -> tuple[trainer_lib.TrainState, bool, dict]:
  """The latest checkpoint if there is one, else a fresh state (from `config.init_from` if set);
  whether it resumed, and the checkpoint's meta ({} for a fresh state)."""
  restored = ckpt.restore_latest_intact(trainer.abstract_state())
  if restored is not None:
    step, state, meta = restored
    console(f"Resuming from the checkpoint at step {step} in {ckpt.directory}.")
    return state, True, meta
  init_from = config.get("init_from")
  if init_from and "://" not in init_from and not os.path.exists(os.path.expanduser(init_from)):
    raise errors.MissingPathError(
        f"config.init_from={config.init_from!r} does not exist; give a training workdir, its "
        "checkpoints/ folder or a videococa.tools.convert output.")
  state = trainer.init_state()
  if config.get("init_from"):
    module = trainer_lib.load_model_module(config.model_name)
    params, report = module.load(jax.device_get(state.params), config.init_from, config.model,
                                 dont_load=tuple(config.get("init_dont_load", ())))
    # On the host: the checkpoint's arrays were read onto one device, the state spans the mesh.
    state = trainer.init_state(params=jax.device_get(params))
    console(f"Initialised from {config.init_from}: {len(report['copied'])} parameters copied, "
            f"{len(report['resized'])} resized, {len(report['new'])} new, "
            f"{len(report['not_loaded'])} not loaded (config.init_dont_load), "
            f"{len(report['unused'])} unused.")
  else:
    console(f"Starting from scratch: no checkpoint in {ckpt.directory}.")
  return state, False, {}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) training to `config.total_steps`.

  Returns a summary: `start_step` (0, or the checkpoint step resumed from), `end_step`,
  `resumed` (bool), `preempted` (bool) and the last logged `metrics`.
  """
  extensions.load(config)
  validate.validate(config)  # Before anything is created: the workdir, the checkpointer.
  if config.get("compilation_cache_dir"):  # Opt-in: reuses compiled steps across restarts.
    compilation_cache.set_cache_dir(config.compilation_cache_dir)
    compilation_cache.reset_cache()  # Opened at the next compile, even if one was open.
  profile = _profile_steps(config)
  _check_workdir(workdir)
  mesh = sharding.make_mesh(config.mesh)
  sharding.local_batch_size(config.input.batch_size, mesh)  # Fails early on a bad batch size.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 save_interval_steps=config.checkpoint_every,
                                 max_to_keep=config.keep_checkpoints)
  writer = None
  preemption = PreemptionSignal()
  try:
    trainer = trainer_lib.Trainer(config, mesh, optim.stage_of(config, ckpt.latest_step() or 0))
    state, resumed, meta = _initial_state(config, trainer, ckpt)
    start = int(jax.device_get(state.step))
    writer = metric_writer.MetricWriter(workdir, resumed_step=start)
    summary = dict(start_step=start, end_step=start, resumed=resumed, preempted=False, metrics={})
    if start >= config.total_steps:
      console(f"Step {start} >= config.total_steps={config.total_steps}: nothing to do.")
      return summary
    summary.update(_train_loop(config, trainer, state, start, ckpt, writer, preemption, workdir,
                               profile, meta.get(UNLOGGED_KEY, [])))
    return summary
  finally:
    preemption.restore()
    ckpt.close()  # Waits for the checkpoint being written (async) before the process exits.
    if writer is not None:
      writer.close()


# Checkpoint meta key: per-step metrics of the steps since the last log step (preemption only).
UNLOGGED_KEY = "unlogged_metrics"


def _check_workdir(workdir: str) -> None:
  """Creates a local `workdir` and checks that files can be written into it."""
  if "://" in workdir:  # Object stores: orbax and the writers report their own errors.
    return
  probe = os.path.join(workdir, f".write_test_{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise errors.UserError(f"--workdir={workdir} cannot be created or written ({e.strerror}: "
                           f"{e.filename}); pick a writable directory.") from None


def _profile_steps(config) -> tuple[int, int] | None:
  """`config.profile_steps='a,b'`: trace steps a..b (1 <= a <= b) with the JAX profiler."""
  spec = str(config.get("profile_steps") or "").strip()
  if not spec:
    return None
  try:
    first, last = (int(x) for x in spec.split(","))
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise errors.UserError(f"config.profile_steps={spec!r}: give 'FIRST,LAST' steps with "
                           "1 <= FIRST <= LAST, e.g. '10,15'.")
  return first, last


def _compile(trainer, batch) -> None:
  start = time.perf_counter()
  trainer.compile_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
  console(f"Compiled the train step (stage {trainer.stage}) in {time.perf_counter() - start:.1f}s.")
  distributed.barrier("compiled")  # Processes start stepping together (multi-process only).


def _check_nonfinite(step: int, streak, total, config, ckpt) -> None:
  """Reports a skipped (non-finite) `step`; stops the run after too many in a row."""
  streak, total = int(streak), int(total)
  if not streak:
    return
  console(f"Step {step}: non-finite loss or gradient, update skipped ({streak} in a row, {total} "
          "in total).")
  if streak >= config.max_consecutive_nonfinite:
    latest = ckpt.latest_step()
    raise NonFiniteError(
        f"Stopping at step {step}: {streak} consecutive steps had a non-finite loss or gradient "
        f"(config.max_consecutive_nonfinite={config.max_consecutive_nonfinite}); all were "
        f"skipped, so the parameters are those of step {step - streak}. The last checkpoint "
        f"({'none' if latest is None else f'step {latest}'}, in {ckpt.directory}) is intact. Lower "
        "the learning rate or check the data, then re-run to resume from it.")


def _train_loop(config, trainer, state, start, ckpt, writer, preemption, workdir,
                profile=None, unlogged=()) -> dict:
  """Steps from `start` to `config.total_steps`, logging and checkpointing; see `train`.
  `profile` = (first, last): a profiler trace of those steps in `workdir/profile/`. `unlogged`:
  the per-step metrics of the steps before `start` that a preempted run had not logged yet (its
  checkpoint's meta), averaged into the first log step as an uninterrupted run would."""
  evals = evaluators.build_all(config, model=trainer.model, mesh=trainer.mesh, workdir=workdir)
  batches = inputs.make_train_iterator(config, trainer.mesh, start, workdir)
  first = next(batches)
  _compile(trainer, first)
  batches = itertools.chain([first], batches)
  progress = tqdm.tqdm(total=config.total_steps, initial=start, desc="train", unit="step",
                       disable=jax.process_index() != 0, dynamic_ncols=True,
                       mininterval=0.5 if sys.stderr.isatty() else 30)
  pending, metrics, preempted = list(unlogged), {}, False
  tick, tick_step, step = time.perf_counter(), start, start
  # What `config_utils.init_from_checkpoint` reads to start another recipe from this run.
  model_meta = dict(model_name=config.model_name, model=config.model.to_dict(),
                    tokenizer=config.input.get("tokenizer"))
  for step in range(start + 1, config.total_steps + 1):
    batch = next(batches)
    if optim.stage_of(config, step) != trainer.stage:  # E.g. frozen -> fine-tuning.
      trainer = trainer_lib.Trainer(config, trainer.mesh, optim.stage_of(config, step))
      state = trainer.continue_from(state)
      _compile(trainer, batch)
    if profile and step == profile[0]:
      jax.profiler.start_trace(os.path.join(workdir, "profile"))
    state, step_metrics = trainer.step(state, batch)
    if profile and step == profile[1]:
      jax.block_until_ready(step_metrics)
      jax.profiler.stop_trace()
      console(f"Profiled steps {profile[0]}-{profile[1]}: {os.path.join(workdir, 'profile')}.")
    pending.append(step_metrics)
    progress.update(1)
    if step % config.log_every == 0 or step == config.total_steps:
      # The loop's only device -> host transfer: between log steps the host dispatches ahead.
      history = jax.device_get(pending)
      elapsed = time.perf_counter() - tick  # After the transfer: the interval's steps are done.
      metrics = _log_step(writer, progress, step, history, elapsed, step - tick_step, trainer,
                          config)
      for offset, logged in enumerate(history, step - len(history) + 1):
        _check_nonfinite(offset, logged["nonfinite_streak"], logged["nonfinite_steps"], config,
                         ckpt)
      pending, tick, tick_step = [], time.perf_counter(), step
    due = evaluators.due(evals, step, config.total_steps)
    if due:
      progress.clear()
      evaluators.run_all(due, state.params, step, writer, workdir)
    meta = dict(step=step, global_batch=config.input.batch_size, seed=config.seed, **model_meta)
    preempted = preemption.should_stop(step)
    if preempted and pending:  # Carried into the resumed run's first log step.
      meta[UNLOGGED_KEY] = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
    ckpt.save(step, state, meta, force=preempted or step == config.total_steps)
    if preempted:
      console(f"Preempted: checkpoint at step {step} written; exiting.")
      break
  progress.close()
  return dict(end_step=step, preempted=preempted, metrics=metrics)


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  if not workdir:
    raise app.UsageError("--workdir is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Library INFO logs are noise at the terminal.
  distributed.initialize()
  train(flags.FLAGS.config, workdir)
  console(f"TensorBoard logs: {os.path.join(workdir, 'tensorboard')}\n"
          f"Checkpoints: {os.path.join(workdir, 'checkpoints')}")
