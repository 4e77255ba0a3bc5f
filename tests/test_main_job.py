"""The main job end to end at smoke-test size (`./run.sh --quick`): every stage runs and the
report is written."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_main_job_writes_the_report(tmp_path):
  env = dict(os.environ, VIDEOCOCA_DATA_DIR=str(tmp_path / "data"))
  env["XLA_FLAGS"] = ""  # The job runs on the one real CPU device, as ./run.sh does.
  job = tmp_path / "job"
  subprocess.run([sys.executable, "-m", "videococa.projects.shapes.main", "--quick", f"--workdir={job}"],
                 cwd=REPO, env=env, check=True, timeout=900)
  report = tmp_path / "job_quick" / "report"
  for name in ("index.html", "report.md"):
    assert (report / name).is_file()
  markdown = (report / "report.md").read_text()
  for metric in ("top-1 accuracy", "text→video R@1", "CIDEr", "chance", "most common caption"):
    assert metric in markdown
  assert list(report.glob("*confusion*.png")) and list(report.glob("*training*.png"))
  for stage in ("image_coca", "video_coca"):
    assert (tmp_path / "job_quick" / stage / "checkpoints").is_dir()
