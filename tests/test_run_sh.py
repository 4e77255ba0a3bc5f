"""The documented `run.sh` commands exit with the documented status: 0 after a successful setup,
2 with one `error:` line for a command or flag the main job does not know."""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_sh(*args, timeout=300):
  return subprocess.run([os.path.join(REPO, "run.sh"), *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("args", [("setup",), ("setup", "--test")])
def test_setup_exits_0(args):
  result = _run_sh(*args)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (("sutdy",), "error: Unknown command 'sutdy'"),
    (("--quick", "--no_such_flag"), "error: Unknown command line flag 'no_such_flag'"),
])
def test_main_job_usage_errors_exit_2_with_one_line(args, message):
  result = _run_sh(*args)
  assert result.returncode == 2, result.stdout + result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and errors[0].startswith(message), result.stderr
  assert "Traceback" not in result.stderr
