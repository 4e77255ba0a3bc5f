"""The trainer as 2 processes x 4 fake CPU devices (one 8-device mesh, gloo collectives), launched
by the test itself with a local coordinator, against the 1-process 8-device `reference_run`.

One run covers: a 1-process checkpoint restored by 2 processes; each process reading its rows of
the global batch (the losses equal the 1-process run's); SIGTERM to one process stopping both at
the same step with one checkpoint (JAX's preemption sync point) and exit status 0; checkpoints
written once (one directory per step, one metrics line per step); the 2-process checkpoint
restored by 1 process, which continues like the reference.
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
# Gloo's all-reduce sums in another order than the in-process one: last-bit differences.
RTOL, ATOL = 1e-5, 1e-6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_and_share_checkpoints(reference_run, tmp_path):
  want = ft_helpers.records(reference_run)
  workdir = tmp_path / "two"
  shutil.copytree(reference_run / "checkpoints" / "4", workdir / "checkpoints" / "4")
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))
  env = {"XLA_FLAGS": f"{xla_flags} --xla_force_host_platform_device_count=4".strip()}
  port = _free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  procs = []
  for i in range(2):
    with open(logs[i], "w") as log:
      procs.append(ft_helpers.launch(
          ft_helpers.cli_args(workdir) + [f"--coordinator_address=127.0.0.1:{port}",
                                          "--num_processes=2", f"--process_id={i}"],
          env=env, log=log))
  try:
    ft_helpers.wait_for(lambda: ft_helpers.last_step(workdir) >= 7, procs[0], TIMEOUT_S, "step 7",
                        logs[0])
    procs[1].send_signal(signal.SIGTERM)  # Preempt one process: both must stop together.
    codes = [p.wait(TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert codes == [0, 0], "\n".join(ft_helpers.tail(log) for log in logs)
  process0 = ft_helpers.tail(logs[0], 100_000)
  assert "Resuming from the checkpoint at step 4" in process0
  stopped = ft_helpers.last_step(workdir)
  if stopped < TOTAL_STEPS:  # (A very fast machine may finish before the signal lands.)
    assert f"Preempted: checkpoint at step {stopped} written" in process0
  steps = ft_helpers.checkpoint_steps(workdir)
  assert stopped in steps and set(steps) <= {4, 8, stopped, TOTAL_STEPS}
  # Written once: one directory per step, nothing left half-written or per process.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(map(str, steps))
  got = ft_helpers.records(workdir)  # One line per step: only process 0 writes metrics.
  assert sorted(got) == list(range(5, stopped + 1))
  ft_helpers.assert_same_records(got, want, got, rtol=RTOL, atol=ATOL)

  # The 2-process checkpoint, restored by 1 process (8 devices), continues like the reference.
  resume = stopped if stopped < TOTAL_STEPS else 8
  one = tmp_path / "one"
  shutil.copytree(workdir / "checkpoints" / str(resume), one / "checkpoints" / str(resume))
  summary = ft_helpers.run_in_process(one)
  assert (summary["start_step"], summary["end_step"]) == (resume, TOTAL_STEPS)
  ft_helpers.assert_same_records(ft_helpers.records(one), want, range(resume + 1, TOTAL_STEPS + 1),
                                 rtol=RTOL, atol=ATOL)
