"""Tests of the job report on a synthetic job directory (no training, no JAX)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from videococa.tools import report

CLASSES = ["left", "right", "up", "down", "grow", "shrink", "still"]
TOP1 = 0.4286
CIDER, BASELINE_CIDER = 0.8123, 0.1357
METEOR_REASON = "unavailable: no Java runtime"


def _write_jsonl(path, records, torn_tail=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    if torn_tail:
      f.write('{"step": 99, "prefix": "tr')


def _train_records(steps=20):
  return [dict(step=s, prefix="train", loss=5.0 / s, contrastive_loss=2.0 / s, caption_loss=3.0 / s,
               contrastive_accuracy=1 - 1 / s, caption_accuracy=0.5 - 0.2 / s, temperature=0.07,
               learning_rate=1e-3 * min(1, s / 5), grad_norm=1.0, samples_per_s=100.0 + s,
               step_time_s=0.1) for s in range(1, steps + 1)]


def _write_eval(stage_dir, name, result):
  os.makedirs(os.path.join(stage_dir, "evals"), exist_ok=True)
  with open(os.path.join(stage_dir, "evals", f"{name}_latest.json"), "w") as f:
    json.dump(result, f)


def _result(name, kind, **fields):
  """An evaluator result as `evaluators.run_all` writes it (metrics at the top level)."""
  return dict(name=name, type=kind, step=20, seconds=1.5, data={"name": "shapes_video/video"},
              pp="sample_frames(8)|decode_video", **fields)


def _classification():
  confusion = np.diag([3, 2, 1, 1, 1, 1, 0]) + 1
  return _result("motion", "classification", top1=TOP1, top5=0.9, mean_per_class_accuracy=0.41,
                 chance=1 / 7, num_examples=58, num_templates=3, class_names=CLASSES,
                 per_class_accuracy={c: (None if c == "still" else 0.5) for c in CLASSES},
                 confusion_matrix=confusion.tolist())


def _retrieval():
  return _result("retrieval", "retrieval", **{
      "t2v_R@1": 0.3125, "t2v_R@5": 0.7, "t2v_R@10": 0.9, "t2v_median_rank": 3.0,
      "t2v_mean_rank": 4.2, "v2t_R@1": 0.275, "chance_t2v_R@1": 0.0625, "chance_v2t_R@1": 0.0625,
      "num_texts": 48, "num_videos": 16, "num_examples": 16})


def _captioning():
  scores = dict(bleu4=0.2, meteor=None, meteor_status=METEOR_REASON, rouge_l=0.4, cider=CIDER,
                tokenizer="simple", num_captions=16)
  return _result(
      "captions", "captioning", **scores, num_examples=16, decode={"method": "greedy", "seed": 0},
      baseline_most_common={**scores, "cider": BASELINE_CIDER, "bleu4": 0.05,
                             "caption": "a red circle moves left", "data": {"split": "train"}},
      examples=[{"id": "clip0", "prediction": "a <b>blue</b> square & a circle",
                 "references": ["a blue square grows", "a square gets bigger"],
                 "frames": "captions_examples/clip0.png"},
                {"id": "clip1", "prediction": "nothing", "references": ["still"],
                 "frames": "captions_examples/missing.png"}])


def _write_png(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((32, 128, 3), 200, np.uint8)).save(path)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """A job with an image stage (train metrics only) and a video stage (train + periodic evals)."""
  job_dir = str(tmp_path_factory.mktemp("job"))
  image_dir, video_dir = os.path.join(job_dir, "image_coca"), os.path.join(job_dir, "video_coca")
  _write_jsonl(os.path.join(image_dir, "metrics.jsonl"), _train_records(), torn_tail=True)
  evals = [dict(step=s, prefix="eval/motion", top1=0.1 * s / 5, chance=1 / 7, num_examples=58)
           for s in (5, 10, 15, 20)]
  evals += [dict(step=s, prefix="eval/captions", cider=0.04 * s, bleu4=0.01 * s) for s in (10, 20)]
  _write_jsonl(os.path.join(video_dir, "metrics.jsonl"), _train_records() + evals)
  _write_eval(video_dir, "motion", _classification())
  _write_eval(video_dir, "retrieval", _retrieval())
  _write_eval(video_dir, "captions", _captioning())
  _write_png(os.path.join(video_dir, "evals", "captions_examples", "clip0.png"))
  return job_dir


@pytest.fixture(scope="module")
def written(job):
  """Writes the report of `job` once; returns (out_dir, html, markdown)."""
  stages = {"Image CoCa pretraining": "image_coca",
            "VideoCoCa (attentional pooler, LiT)": os.path.join(job, "video_coca")}
  extra = {"Variant study": [
      {"variant": "mean pool", "motion top-1": 0.25},
      {"variant": "attentional pooler", "motion top-1": TOP1, "note": "x|y"}]}
  path = report.write_report(job, stages, extra_tables=extra)
  out_dir = os.path.dirname(path)
  assert path == os.path.join(job, "report", "index.html")
  with open(path) as f, open(os.path.join(out_dir, "report.md")) as g:
    return out_dir, f.read(), g.read()


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_writes_files_and_figures(written):
  out_dir, html_text, md = written
  pngs = sorted(f for f in os.listdir(out_dir) if f.endswith(".png"))
  assert pngs == ["stage0_image_coca_pretraining_training.png",
                  "stage1_videococa_attentional_pooler_lit_captions_example0.png",
                  "stage1_videococa_attentional_pooler_lit_eval_curves.png",
                  "stage1_videococa_attentional_pooler_lit_motion_confusion.png",
                  "stage1_videococa_attentional_pooler_lit_training.png"]
  assert all(_is_png(os.path.join(out_dir, f)) for f in pngs)
  for png in pngs:
    assert f'src="{png}"' in html_text and f"]({png})" in md
  assert "<script" not in html_text and "http" not in html_text


def test_headline_metrics_beside_chance_and_baseline(written):
  _, html_text, md = written
  for text in (html_text, md):
    assert f"{TOP1:.4f}" in text and "0.1429 (chance)" in text  # Motion top-1 vs 1/7.
    assert "0.3125" in text and "0.0625 (chance)" in text  # Text->video R@1 vs chance.
    assert f"{CIDER:.4f}" in text and f"{BASELINE_CIDER:.4f} (most common caption)" in text
    assert METEOR_REASON in text and "unavailable (most common caption)" in text
    assert "unavailable: unavailable" not in text
    assert "a red circle moves left" in text and "method=greedy" in text
    assert "shapes_video" not in text  # Unknown extras are not shown.


def test_examples_escaped_and_extra_tables(written):
  _, html_text, md = written
  assert "a &lt;b&gt;blue&lt;/b&gt; square &amp; a circle" in html_text
  assert "<b>blue</b>" not in html_text and "<b>blue</b>" not in md
  assert "a blue square grows" in html_text and "a square gets bigger" in md
  assert "(frames unavailable)" in html_text  # clip1's PNG does not exist.
  assert "<h2>Variant study</h2>" in html_text and "## Variant study" in md
  assert "| variant | motion top-1 | note |" in md and "x\\|y" in md
  assert "0.2500" in html_text
  assert "No training metrics found" not in html_text  # The torn jsonl line is skipped.


def test_nested_metrics_format(tmp_path):
  """Metrics under `metrics`, a `baseline` with its own `metrics`, `frames_png` examples."""
  stage = str(tmp_path / "s")
  _write_eval(stage, "caps", {
      "type": "captioning", "metrics": {"cider": CIDER, "meteor": 0.25},
      "baseline": {"name": "constant", "caption": "x", "metrics": {"cider": BASELINE_CIDER}},
      "examples": [{"id": 7, "prediction": "p", "references": "r", "frames_png": "ex/7.png"}]})
  _write_png(os.path.join(stage, "ex", "7.png"))  # Relative to the stage, not to evals/.
  path = report.write_report(str(tmp_path), {"s": stage})
  with open(path) as f:
    text = f.read()
  assert f"{BASELINE_CIDER:.4f} (constant)" in text and "0.2500" in text
  assert "unavailable (constant)" in text  # The baseline has no METEOR.
  assert _is_png(os.path.join(os.path.dirname(path), "stage0_s_caps_example0.png"))


def test_missing_pieces_are_unavailable(tmp_path):
  job = str(tmp_path)
  stage = os.path.join(job, "odd")
  _write_jsonl(os.path.join(stage, "metrics.jsonl"), [{"step": 1, "prefix": "train"}])
  _write_eval(stage, "motion", {"metrics": {"top1": 0.5}})  # No type, chance or confusion.
  _write_eval(stage, "captions", {"type": "captioning",
                                  "metrics": {"cider": None, "meteor_status": "JVM crashed"}})
  _write_eval(stage, "custom", {"step": 7, "seconds": 1.0, "score": 2.5, "flag": True})
  os.makedirs(os.path.join(stage, "evals"), exist_ok=True)
  with open(os.path.join(stage, "evals", "broken_latest.json"), "w") as f:
    f.write("{not json")
  path = report.write_report(job, {"nothing": os.path.join(job, "missing"), "odd": "odd"},
                             out_dir=os.path.join(job, "out"), title="a <title>")
  with open(path) as f:
    text = f.read()
  assert "<title>a &lt;title&gt;</title>" in text
  assert "No training metrics found (unavailable)" in text  # Stage "nothing".
  assert "No evaluator results found (unavailable)" in text
  assert "0.5000" in text and "unavailable (chance)" in text  # Type guessed from `top1`.
  assert "<td>CIDEr</td><td>unavailable</td><td>unavailable (baseline)</td>" in text
  assert "<td>unavailable: JVM crashed</td>" in text  # METEOR: no value, only a status.
  assert "Confusion matrix unavailable" in text and "No examples available" in text
  assert "<td>score</td><td>2.5000</td>" in text  # Unknown type: its numbers as they are.
  assert "<td>step</td>" not in text and "<td>seconds</td>" not in text
  assert "<td>flag</td>" not in text
  assert "broken" not in text


def test_no_evaluators_at_all(tmp_path):
  _write_jsonl(str(tmp_path / "s" / "metrics.jsonl"), _train_records(3))
  path = report.write_report(str(tmp_path), {"s": "s"})
  with open(os.path.join(os.path.dirname(path), "report.md")) as f:
    md = f.read()
  assert "*No evaluator results found (unavailable).*" in md
  assert "| s | 3 |" in md


def test_parse_stages_and_fmt():
  assert report.parse_stages(["A=B=/x/y", "c=d"]) == {"A=B": "/x/y", "c": "d"}
  with pytest.raises(ValueError):
    report.parse_stages(["no_path"])
  assert [report.fmt(v) for v in (None, 1 / 7, 3, 3e-4, 110.52, 2e6, float("nan"))] == [
      "n/a", "0.1429", "3", "3.000e-04", "110.5", "2.000e+06", "nan"]


@pytest.mark.slow
def test_cli(tmp_path):
  _write_jsonl(str(tmp_path / "image_coca" / "metrics.jsonl"), _train_records(3))
  _write_eval(str(tmp_path / "video_coca"), "retrieval", _retrieval())
  os.makedirs(tmp_path / "not_a_stage")
  out = str(tmp_path / "cli_report")
  result = subprocess.run(
      [sys.executable, "-m", "videococa.tools.report", f"--job_dir={tmp_path}", f"--out_dir={out}"],
      capture_output=True, text=True, check=True, timeout=120)
  assert result.stdout.strip() == os.path.join(out, "index.html")
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  assert "## image_coca" in md and "## video_coca" in md  # Stages discovered in the job dir.
  assert "not_a_stage" not in md and "0.3125" in md
