"""Fault tolerance of training (docs/fault_tolerance.md): kill -9 and exact resume, a kill in the
middle of a checkpoint write, SIGTERM, non-finite steps, resharding restore.

The runs use `ft_helpers`' config (tiny CoCa, random data, 8 CPU devices, 12 steps, a checkpoint
every 4) and are compared with `reference_run` (conftest.py), an uninterrupted run of it.
Kill points are random; the seed is in the failure message.
"""
import os
import random
import shutil
import signal
import sys
import time

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

import ft_helpers
from ft_helpers import TOTAL_STEPS
from videococa import errors
from videococa.data import inputs
from videococa.train import checkpoint, loop as train, sharding, trainer as trainer_lib

pytestmark = pytest.mark.slow  # Subprocesses, kill loops and multi-mesh restores.

ALL_STEPS = range(1, TOTAL_STEPS + 1)
TIMEOUT_S = 600  # Per subprocess run: generous for loaded CI machines.


def _log(tmp_path, name):
  return open(tmp_path / f"{name}.log", "w")


def test_kill9_at_random_moments_then_resume_is_bit_exact(reference_run, tmp_path):
  """kill -9 during training, then kill -9 in the middle of a checkpoint write: each restart of
  the same command resumes from the last complete checkpoint and the whole loss curve equals the
  uninterrupted run's bit for bit (data order included); partial checkpoints are never used."""
  seed = random.randrange(2 ** 32)
  rng = random.Random(seed)
  want = ft_helpers.records(reference_run)
  workdir = tmp_path / "w"
  args = ft_helpers.cli_args(workdir)

  # 1. kill -9 once step k is logged (a random moment: mid-step, mid-checkpoint or in between).
  kill_step = rng.randint(2, 8)
  with _log(tmp_path, "run1") as log:
    proc = ft_helpers.launch(args, log=log)
    ft_helpers.wait_for(lambda: ft_helpers.last_step(workdir) >= kill_step, proc, TIMEOUT_S,
                        f"step {kill_step}", tmp_path / "run1.log")
    time.sleep(rng.uniform(0, 0.02))
    ft_helpers.kill(proc)
  first = ft_helpers.records(workdir)
  ft_helpers.assert_same_records(first, want, first)
  committed = ft_helpers.checkpoint_steps(workdir)
  assert max(committed, default=0) < TOTAL_STEPS, f"seed {seed}: run 1 finished before the kill"

  # 2. Restart; kill -9 while a checkpoint is being written (the test hook holds the commit).
  with _log(tmp_path, "run2") as log:
    proc = ft_helpers.launch(args, log=log, commit_delay_s=120)
    log2 = tmp_path / "run2.log"
    ft_helpers.wait_for(lambda: "sleeping before committing" in ft_helpers.tail(log2, 100_000),
                        proc, TIMEOUT_S, "a checkpoint write", log2)
    ft_helpers.kill(proc)
  resumed_from = max(committed, default=0)
  run2 = ft_helpers.tail(tmp_path / "run2.log", 100_000)
  assert (f"Resuming from the checkpoint at step {resumed_from}" if committed
          else "Starting from scratch") in run2, f"seed {seed}"
  assert ft_helpers.checkpoint_steps(workdir) == committed, f"seed {seed}"  # Not committed ...
  partial = [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
  assert partial, f"seed {seed}: no partial checkpoint left by the kill"  # ... but half written.

  # 3. Restart: resumes from the last complete checkpoint and finishes.
  with _log(tmp_path, "run3") as log:
    proc = ft_helpers.launch(args, log=log)
    assert proc.wait(TIMEOUT_S) == 0, ft_helpers.tail(tmp_path / "run3.log")
  run3 = ft_helpers.tail(tmp_path / "run3.log", 100_000)
  assert (f"Resuming from the checkpoint at step {resumed_from}" if committed
          else "Starting from scratch") in run3, f"seed {seed}"
  assert ft_helpers.checkpoint_steps(workdir) == sorted(
      set(committed) | {4, 8, 12}), f"seed {seed}"
  assert not [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
  got = ft_helpers.records(workdir)  # Fails on duplicated steps (the re-run's are replaced).
  assert sorted(got) == list(ALL_STEPS), f"seed {seed}"
  ft_helpers.assert_same_records(got, want, ALL_STEPS)
  # TensorBoard shows every logged step exactly once, in order (no gaps from the kills).
  assert ft_helpers.tensorboard_steps(workdir) == list(ALL_STEPS), f"seed {seed}"
  assert all(p.stat().st_size for p in (workdir / "tensorboard").iterdir())


def test_sigterm_finishes_the_step_checkpoints_and_exits_0(reference_run, tmp_path):
  seed = random.randrange(2 ** 32)
  signal_step = random.Random(seed).randint(2, 8)
  workdir = tmp_path / "w"
  with _log(tmp_path, "run") as log:
    proc = ft_helpers.launch(ft_helpers.cli_args(workdir), log=log)
    ft_helpers.wait_for(lambda: ft_helpers.last_step(workdir) >= signal_step, proc, TIMEOUT_S,
                        f"step {signal_step}", tmp_path / "run.log")
    assert ft_helpers.kill(proc, signal.SIGTERM, TIMEOUT_S) == 0, ft_helpers.tail(
        tmp_path / "run.log")
  stopped = ft_helpers.last_step(workdir)
  assert signal_step <= stopped < TOTAL_STEPS, f"seed {seed}"
  assert stopped in ft_helpers.checkpoint_steps(workdir), f"seed {seed}"
  assert f"Preempted: checkpoint at step {stopped} written" in ft_helpers.tail(tmp_path / "run.log")
  got = ft_helpers.records(workdir)
  assert sorted(got) == list(range(1, stopped + 1))
  ft_helpers.assert_same_records(got, ft_helpers.records(reference_run), got)


# ----------------------------------------------------------------------------- Non-finite steps.
ONE_DEVICE = {"mesh.data": 1}  # The first device only: one small program for both tests below.


def _float_frames(batch, nan=False):
  """Frames as model-ready floats (so that NaNs can be injected), optionally NaN in one clip."""
  frames = batch["frames"].astype(np.float32) / 127.5 - 1.0
  if nan:
    frames[0, 0, 0, 0, 0] = np.nan
  return dict(batch, frames=frames)


def _host(tree):
  """Host copy of a state, PRNG keys as their data, for bitwise comparison."""
  return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x), jax.device_get(tree))


def test_nonfinite_step_is_skipped_and_counted():
  config = ft_helpers.config(**ONE_DEVICE)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  trainer = trainer_lib.Trainer(config, mesh)
  rows = np.arange(config.input.batch_size)
  batches = inputs.random_batches(config, rows, 0)
  good = [_float_frames(next(batches)) for _ in range(2)]
  bad = _float_frames(good[1], nan=True)
  state, _ = trainer.step(trainer.init_state(), sharding.put_batch(good[0], mesh))
  before = _host(state)
  state, metrics = trainer.step(state, sharding.put_batch(bad, mesh))  # Donates the old state.
  after = _host(state)
  assert not np.isfinite(float(metrics["loss"]))
  for name in ("params", "opt_state"):  # Unchanged, bit for bit.
    for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(after, name))):
      np.testing.assert_array_equal(a, b)
  assert (int(after.step), int(after.nonfinite_streak), int(after.nonfinite_total)) == (2, 1, 1)
  assert int(metrics["nonfinite_steps"]) == 1 and int(metrics["nonfinite_streak"]) == 1
  state, metrics = trainer.step(state, sharding.put_batch(good[1], mesh))
  assert np.isfinite(float(metrics["loss"]))
  assert (int(state.nonfinite_streak), int(state.nonfinite_total)) == (0, 1)  # Streak reset.
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(after.params), jax.tree.leaves(_host(state.params))))


def test_consecutive_nonfinite_steps_stop_the_run_with_the_checkpoint_intact(
    tmp_path, monkeypatch, capsys):
  real = inputs.random_batches

  def poisoned(config, rows, start_step):  # The batches of steps >= 5 hold a NaN.
    for step, batch in enumerate(real(config, rows, start_step), start_step + 1):
      yield _float_frames(batch, nan=step >= 5)

  monkeypatch.setattr(inputs, "random_batches", poisoned)
  with pytest.raises(train.NonFiniteError) as e:
    ft_helpers.run_in_process(tmp_path, max_consecutive_nonfinite=3, **ONE_DEVICE)
  assert str(e.value).startswith(
      "Stopping at step 7: 3 consecutive steps had a non-finite loss or gradient "
      "(config.max_consecutive_nonfinite=3); all were skipped, so the parameters are those of "
      f"step 4. The last checkpoint (step 4, in {tmp_path / 'checkpoints'}) is intact.")
  assert "Step 5: non-finite loss or gradient, update skipped (1 in a row, 1 in total)." in (
      capsys.readouterr().out)
  got = ft_helpers.records(tmp_path)
  assert [got[s]["nonfinite_steps"] for s in range(1, 8)] == [0, 0, 0, 0, 1, 2, 3]
  assert all(np.isfinite(got[s]["loss"]) for s in range(1, 5))
  assert not any(np.isfinite(got[s]["loss"]) for s in range(5, 8))
  assert ft_helpers.checkpoint_steps(tmp_path) == [4]
  config = ft_helpers.config(**ONE_DEVICE)
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), save_interval_steps=4,
                               max_to_keep=3) as ckpt:
    state, meta = ckpt.restore(None, trainer.abstract_state())
  assert meta["step"] == 4 and int(state.step) == 4 and int(state.nonfinite_total) == 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_a_preemption_between_log_steps_logs_the_same_averages(tmp_path, monkeypatch):
  """Preempted at step 6 with log_every=4: the resumed run's step-8 record averages steps 5-8,
  bit for bit the uninterrupted run's (the unlogged steps 5-6 travel in the checkpoint meta)."""
  overrides = dict(log_every=4, **ONE_DEVICE)
  ft_helpers.run_in_process(tmp_path / "reference", **overrides)
  stop_at = {"step": 6}
  real = train.PreemptionSignal.should_stop
  monkeypatch.setattr(train.PreemptionSignal, "should_stop",
                      lambda self, step: step == stop_at["step"] or real(self, step))
  summary = ft_helpers.run_in_process(tmp_path / "run", **overrides)
  assert summary["preempted"] and summary["end_step"] == 6
  assert ft_helpers.checkpoint_steps(tmp_path / "run") == [4, 6]
  stop_at["step"] = None
  ft_helpers.run_in_process(tmp_path / "run", **overrides)
  got, want = (ft_helpers.records(tmp_path / name) for name in ("run", "reference"))
  assert sorted(got) == sorted(want) == [4, 8, 12]
  ft_helpers.assert_same_records(got, want, [4, 8, 12])


def test_the_step_loop_syncs_with_the_host_only_at_log_steps(tmp_path, monkeypatch):
  """Between log steps the host never waits for the device (one `device_get` per log interval),
  and a run of non-finite steps still stops within one log interval, before that interval's
  checkpoint is written."""
  real_batches, real_get = inputs.random_batches, jax.device_get
  calls = []

  def poisoned(config, rows, start_step):  # The batches of steps >= 5 hold a NaN.
    for step, batch in enumerate(real_batches(config, rows, start_step), start_step + 1):
      yield _float_frames(batch, nan=step >= 5)

  def counting_get(tree):
    if sys._getframe(1).f_globals["__name__"] == train.__name__:  # pylint: disable=protected-access
      calls.append(len(jax.tree.leaves(tree)))
    return real_get(tree)

  monkeypatch.setattr(inputs, "random_batches", poisoned)
  monkeypatch.setattr(jax, "device_get", counting_get)
  with pytest.raises(train.NonFiniteError, match="^Stopping at step 7: 3 consecutive steps"):
    ft_helpers.run_in_process(tmp_path, max_consecutive_nonfinite=3, log_every=4, **ONE_DEVICE)
  # The start step (once, before the loop), then log steps 4 and 8 (the error is raised at 8).
  assert len(calls) == 3 and calls[0] == 1  # Per-step transfers would make it 11.
  assert ft_helpers.checkpoint_steps(tmp_path) == [4]
  assert sorted(ft_helpers.records(tmp_path)) == [4, 8]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["state/d/*", "state/manifest.ocdbt",
                                    "state/_METADATA", "meta/metadata"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path,
                                                                    victim, capsys):
  """One file of the newest checkpoint (12) removed: the run warns, moves it aside to
  12.damaged, resumes from 8 and ends bit-identical to the uninterrupted run."""
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  files = sorted((workdir / "checkpoints" / "12").glob(victim))
  assert files, victim
  files[0].unlink()
  ft_helpers.run_in_process(workdir)
  out = capsys.readouterr().out
  assert "warning: checkpoint 12 cannot be restored (" in out
  assert "Resuming from the checkpoint at step 8" in out
  assert (workdir / "checkpoints" / "12.damaged").is_dir()
  assert ft_helpers.checkpoint_steps(workdir) == [4, 8, 12]
  ft_helpers.assert_same_records(ft_helpers.records(workdir), ft_helpers.records(reference_run),
                                 range(1, 13))
  ours, _ = checkpoint.load_params(str(workdir), 12)
  want, _ = checkpoint.load_params(str(reference_run), 12)
  for a, b in zip(jax.tree.leaves(jax.device_get(ours)), jax.tree.leaves(jax.device_get(want))):
    np.testing.assert_array_equal(a, b)


def test_no_restorable_checkpoint_is_one_error(tmp_path):
  """Every checkpoint damaged: one UserError naming them; nothing is deleted."""
  workdir = tmp_path / "run"
  short = {"total_steps": 4, "optimizer.warmup_steps": 1, **ONE_DEVICE}
  ft_helpers.run_in_process(workdir, **short)
  (workdir / "checkpoints" / "4" / "meta" / "metadata").unlink()
  with pytest.raises(errors.UserError, match=r"No checkpoint in .* restores \(damaged: \[4\]"):
    ft_helpers.run_in_process(workdir, **{**short, "total_steps": 8})
  assert (workdir / "checkpoints" / "4.damaged" / "state").is_dir()


# ----------------------------------------------------------------------------- Resharding.
@pytest.mark.parametrize("mesh", [{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
                                  {"mesh.data": 1}], ids=["2x2x2", "1_device"])
def test_checkpoint_of_mesh_8x1x1_restores_onto_another_mesh_and_training_continues(
    reference_run, tmp_path, mesh):
  shutil.copytree(reference_run / "checkpoints" / "8", tmp_path / "checkpoints" / "8")
  summary = ft_helpers.run_in_process(tmp_path, **mesh)
  assert (summary["start_step"], summary["end_step"], summary["resumed"]) == (8, TOTAL_STEPS, True)
  ft_helpers.assert_same_records(ft_helpers.records(tmp_path), ft_helpers.records(reference_run),
                                 range(9, TOTAL_STEPS + 1), rtol=1e-5, atol=1e-6)
  assert os.path.isdir(tmp_path / "checkpoints" / str(TOTAL_STEPS))


@pytest.mark.slow
def test_profile_steps_and_compilation_cache(tmp_path):
  """`profile_steps='2,3'` writes a profiler trace (an XPlane protobuf holding the step's
  computations); `compilation_cache_dir` fills JAX's persistent cache. Bad specs are one line."""
  cache = tmp_path / "cache"
  previous = jax.config.jax_compilation_cache_dir
  try:
    ft_helpers.run_in_process(tmp_path / "run", total_steps=4, profile_steps="2,3",
                              **{"optimizer.warmup_steps": 1},
                              compilation_cache_dir=str(cache), **ONE_DEVICE)
  finally:  # Back to the session's cache.
    compilation_cache.set_cache_dir(previous)
    compilation_cache.reset_cache()
  traces = list((tmp_path / "run" / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and b"_train_step" in traces[0].read_bytes()
  assert any(cache.iterdir())
  for spec in ("3", "0,2", "5,4", "a,b"):
    with pytest.raises(errors.UserError, match=r"config.profile_steps=.*FIRST,LAST"):
      ft_helpers.run_in_process(tmp_path / "bad", profile_steps=spec, **ONE_DEVICE)
  assert not (tmp_path / "bad").exists()
