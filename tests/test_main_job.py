"""The main job end to end at smoke-test size (`./run.sh --quick`): every stage runs, the video
model beats chance on retrieval and the caption metrics are above floors, and the report is
written."""
import json
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
  subprocess.run([sys.executable, "-m", "videococa.projects.shapes.main", "--quick",
                  f"--workdir={job}"], cwd=REPO, env=env, check=True, timeout=900)
  report = tmp_path / "job_quick" / "report"
  for name in ("index.html", "report.md"):
    assert (report / name).is_file()
  markdown = (report / "report.md").read_text()
  for metric in ("top-1 accuracy", "text→video R@1", "CIDEr", "chance", "most common caption"):
    assert metric in markdown
  assert list(report.glob("*confusion*.png")) and list(report.glob("*training*.png"))
  for stage in ("image_coca", "video_coca"):
    assert (tmp_path / "job_quick" / stage / "checkpoints").is_dir()
  # Floors at about half of a measured quick run (64 test clips, 40 video steps), which gave
  # t2v R@1 0.116, v2t R@1 0.125 (chance 0.016), CIDEr 0.103, BLEU-4 0.054, METEOR 0.152.
  # Motion top-1 is at chance at this size (0.125 against 0.143), so it has no floor.
  evals = tmp_path / "job_quick" / "video_coca" / "evals"
  retrieval = json.loads((evals / "retrieval_latest.json").read_text())
  captioning = json.loads((evals / "captioning_latest.json").read_text())
  motion = json.loads((evals / "motion_latest.json").read_text())
  assert retrieval["num_videos"] == motion["num_examples"] == 64
  assert retrieval["t2v_R@1"] >= 0.05 and retrieval["v2t_R@1"] >= 0.05, retrieval
  assert captioning["cider"] >= 0.05 and captioning["bleu4"] >= 0.02, captioning
