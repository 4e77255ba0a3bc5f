"""Shared by the fault-tolerance and multi-process tests: one small training config, run in-process
(the reference) or as `python -m videococa.train` subprocesses, and the metrics to compare.

The config (`configs/coca.py:tiny` on random data, 8-way data parallel over the 8 fake CPU devices
of conftest.py, global batch 8, 12 steps, a checkpoint every 4) is small enough that a run takes
seconds once its programs are in the persistent compilation cache.
"""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

from videococa import config_utils
from videococa.train import loop as train, metric_writer

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOTAL_STEPS, CHECKPOINT_EVERY = 12, 4
OVERRIDES = {"total_steps": TOTAL_STEPS, "log_every": 1, "checkpoint_every": CHECKPOINT_EVERY,
             "keep_checkpoints": 10, "input.batch_size": 8, "mesh.data": -1, "mesh.fsdp": 1,
             "mesh.tensor": 1}
# What must be equal between runs (timings, throughput and FLOP rates are not).
MODEL_METRICS = ("loss", "contrastive_loss", "caption_loss", "contrastive_accuracy",
                 "caption_accuracy", "grad_norm", "learning_rate", "temperature",
                 "nonfinite_steps")


def config(**overrides):
  """The shared config (same values as `cli_args()`), with `overrides` ('a.b': value) applied."""
  cfg = config_utils.load_config("configs/coca.py:tiny")
  for key, value in {**OVERRIDES, **overrides}.items():
    *parents, leaf = key.split(".")
    node = cfg
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return cfg


def cli_args(workdir, **overrides) -> list[str]:
  """`python -m videococa.train` arguments for the shared config and `workdir`."""
  return ["--config=configs/coca.py:tiny", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in {**OVERRIDES, **overrides}.items()]


def run_in_process(workdir, **overrides) -> dict:
  """Trains the shared config in this process (writes to `workdir`); returns train's summary."""
  return train.train(config(**overrides), str(workdir))


def records(workdir) -> dict[int, dict]:
  """{step: train metrics} of `workdir/metrics.jsonl`; fails on duplicated steps."""
  rows = metric_writer.read_jsonl(os.path.join(workdir, "metrics.jsonl"), "train")
  steps = [r["step"] for r in rows]
  assert len(steps) == len(set(steps)), f"duplicated steps in metrics.jsonl: {steps}"
  return {r["step"]: {k: r[k] for k in MODEL_METRICS} for r in rows}


def assert_same_records(got: dict, want: dict, steps, rtol: float = 0.0, atol: float = 0.0):
  """The model metrics of `steps` are equal (bitwise if rtol == atol == 0)."""
  for step in steps:
    assert step in got, f"step {step} missing: got steps {sorted(got)}"
    for key in MODEL_METRICS:
      if rtol == atol == 0:
        assert got[step][key] == want[step][key], (step, key, got[step][key], want[step][key])
      else:
        np.testing.assert_allclose(got[step][key], want[step][key], rtol=rtol, atol=atol,
                                   err_msg=f"step {step} {key}")


COMMIT_DELAY_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "commit_delay")


def launch(args, log=None, commit_delay_s: float = 0) -> subprocess.Popen:
  """Starts `python -m videococa.train ARGS` from the repository root (stdout+stderr -> `log`).

  With `commit_delay_s`, every checkpoint waits that long between writing its files and its
  commit (`tests/commit_delay/sitecustomize.py`), so a test can kill it mid-write."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  if commit_delay_s:
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [COMMIT_DELAY_HOOK, env.get("PYTHONPATH")]))
    env["VIDEOCOCA_TEST_CHECKPOINT_COMMIT_DELAY_S"] = str(commit_delay_s)
  return subprocess.Popen([sys.executable, "-m", "videococa.train", *map(str, args)], cwd=ROOT,
                          env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def last_step(workdir) -> int:
  """The newest step in `workdir/metrics.jsonl` (0 if none); tolerates a half-written line."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines()
  for line in reversed(lines):
    if '"step": ' in line and line.endswith("}"):
      return int(line.split('"step": ')[1].split(",")[0].split("}")[0])
  return 0


def wait_for(condition, proc: subprocess.Popen, timeout: float, what: str, log_path=None):
  """Polls `condition()` every 20 ms until true; fails if `proc` exits first or on timeout."""
  deadline = time.monotonic() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{tail(log_path)}")
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(f"timeout waiting for {what}:\n{tail(log_path)}")
    time.sleep(0.02)


def kill(proc: subprocess.Popen, sig=signal.SIGKILL, timeout: float = 120) -> int:
  proc.send_signal(sig)
  return proc.wait(timeout)


def tail(path, chars: int = 3000) -> str:
  if not path or not os.path.exists(path):
    return ""
  with open(path, errors="replace") as f:
    return f.read()[-chars:]


def checkpoint_steps(workdir) -> list[int]:
  """Committed checkpoint steps (orbax's `<step>/` directories) of `workdir`."""
  root = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def tensorboard_steps(workdir, tag: str = "train/loss") -> list[int]:
  """Steps of `tag` that TensorBoard shows for `workdir`, in file order, honouring purges: a
  SessionLog START at step s (tensorboardX's `purge_step`) hides earlier events of steps >= s."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  steps = []
  for path in sorted(pathlib.Path(workdir, "tensorboard").glob("events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        steps = [s for s in steps if s < event.step]
      for value in event.summary.value:
        if value.tag == tag:
          steps.append(int(event.step))
  return steps
