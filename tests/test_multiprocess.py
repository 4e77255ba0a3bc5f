"""The trainer as 2 processes x 4 fake CPU devices (one 8-device mesh, gloo collectives), launched
by the test itself with a local coordinator, against the 1-process 8-device `reference_run`.

One run covers: a 1-process checkpoint restored by 2 processes; each process reading its rows of
the global batch (the losses equal the 1-process run's); SIGTERM to one process, sent mid-run,
stopping both at the same step with one checkpoint (JAX's preemption sync point) and exit status 0;
checkpoints written once (one directory per step, one metrics line per step); a 2-process
checkpoint restored by 1 process, which continues like the reference.
"""
import os
import re
import shutil
import signal
import socket

import pytest

import ft_helpers
from ft_helpers import TOTAL_STEPS

TIMEOUT_S = 600
STOP_TIMEOUT_S = 120  # From SIGTERM to both processes' exit: a step or two and a checkpoint.
# Gloo's all-reduce sums in another order than the in-process one: last-bit differences.
RTOL, ATOL = 1e-5, 1e-6
# The updates of steps 1..warmup_steps + 1 use the warmup learning rates, then the peak one: the
# same for every total_steps. Up to that step the 2-process run, whatever its total_steps, must
# equal the reference; it writes a checkpoint there for the 1-process continuation.
SHARED_STEPS = ft_helpers.config().optimizer.warmup_steps + 1
# Long enough that SIGTERM always lands mid-run: JAX's preemption notifier polls for the signal
# once a second, and a fast machine runs tens of steps in that time. Never reached: the test
# fails if the run is not stopped within STOP_TIMEOUT_S of the signal.
LONG_STEPS = 1000
SYNC_POINT = re.compile(r"\[process=(\d)\]\[thread=MainThread\] Reached preemption sync point, "
                        r"step=(\d+)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_and_share_checkpoints(reference_run, tmp_path, monkeypatch):
  assert 4 < SHARED_STEPS < TOTAL_STEPS
  want = ft_helpers.records(reference_run)
  workdir = tmp_path / "two"
  shutil.copytree(reference_run / "checkpoints" / "4", workdir / "checkpoints" / "4")
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))
  monkeypatch.setenv("XLA_FLAGS", f"{xla_flags} --xla_force_host_platform_device_count=4".strip())
  port = _free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  args = ft_helpers.cli_args(workdir, total_steps=LONG_STEPS, checkpoint_every=SHARED_STEPS,
                             keep_checkpoints=LONG_STEPS)
  procs = []
  for i in range(2):
    with open(logs[i], "w") as log:
      procs.append(ft_helpers.launch(
          args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}"], log=log))
  try:
    # Mid-run: a step after the restored one is logged, the runs are still going.
    ft_helpers.wait_for(lambda: ft_helpers.last_step(workdir) >= SHARED_STEPS, procs[0], TIMEOUT_S,
                        f"step {SHARED_STEPS}", logs[0])
    running = [p.poll() for p in procs]
    signalled_at = ft_helpers.last_step(workdir)
    procs[1].send_signal(signal.SIGTERM)  # Preempt one process: both must stop together.
    assert running == [None, None], "\n".join(ft_helpers.tail(log) for log in logs)
    codes = [p.wait(STOP_TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert codes == [0, 0], "\n".join(ft_helpers.tail(log) for log in logs)
  process0 = ft_helpers.tail(logs[0], 100_000)
  assert "Resuming from the checkpoint at step 4" in process0
  stopped = ft_helpers.last_step(workdir)
  assert signalled_at <= stopped < LONG_STEPS
  assert f"Preempted: checkpoint at step {stopped} written" in process0
  # Both processes reached the sync point at that step (orbax logs it on each).
  sync = sorted({(int(p), int(s)) for log in logs
                 for p, s in SYNC_POINT.findall(ft_helpers.tail(log, 1_000_000))})
  assert sync == [(0, stopped), (1, stopped)], sync
  steps = ft_helpers.checkpoint_steps(workdir)
  assert steps == sorted({4, *range(SHARED_STEPS, stopped + 1, SHARED_STEPS), stopped})
  # Written once: one directory per step, nothing left half-written or per process.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(map(str, steps))
  got = ft_helpers.records(workdir)  # One line per step: only process 0 writes metrics.
  assert sorted(got) == list(range(5, stopped + 1))
  ft_helpers.assert_same_records(got, want, range(5, SHARED_STEPS + 1), rtol=RTOL, atol=ATOL)

  # The 2-process checkpoint, restored by 1 process (8 devices), continues like the reference.
  one = tmp_path / "one"
  shutil.copytree(workdir / "checkpoints" / str(SHARED_STEPS),
                  one / "checkpoints" / str(SHARED_STEPS))
  summary = ft_helpers.run_in_process(one)
  assert (summary["start_step"], summary["end_step"]) == (SHARED_STEPS, TOTAL_STEPS)
  ft_helpers.assert_same_records(ft_helpers.records(one), want,
                                 range(SHARED_STEPS + 1, TOTAL_STEPS + 1), rtol=RTOL, atol=ATOL)
