r"""The main job behind `./run.sh`: VideoCoCa end to end on the embedded shapes_video data.

  python -m videococa.projects.shapes.main [--workdir=workdir] [--quick]   # ./run.sh [--quick]
  python -m videococa.projects.shapes.main study [--workdir=workdir]       # ./run.sh study

Stages (each skipped when its output exists, so a re-run resumes where it stopped):
  1. build shapes_video (video and image views) if absent;
  2. train a SentencePiece tokenizer on their training captions -> JOB/tokenizer.model;
  3. pretrain an image CoCa on the image view (configs/proj/shapes/coca_image.py) -> JOB/image_coca;
  4. inflate it into a VideoCoCa (python -m videococa.tools.convert inflate)
     -> JOB/video_init_<variant>;
  5. train the VideoCoCa (configs/proj/shapes/videococa.py; attentional pooler with temporal
     embeddings, LiT) -> JOB/video_coca, then zero-shot evals on the held-out `test` compositions;
  6. write the report -> JOB/report/index.html (+ report.md, PNGs).
`study` trains the four video variants with the same budget (`STUDY_VIDEO_STEPS` each) after
stages 1-4 and adds the image model (frames averaged) as a baseline: JOB/study/report.
`--quick` shrinks the data and the schedules to a smoke test of a few minutes.
"""
from __future__ import annotations

import os
import time

from absl import app, flags, logging
import ml_collections

from videococa import cli, config_utils
from videococa.tools import convert, evaluate, report
from videococa.train import checkpoint, loop as train
from videococa.train.metric_writer import console

_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Directory of the job's outputs.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke-test size: small data, few steps.")

IMAGE_CONFIG = "configs/proj/shapes/coca_image.py"
VIDEO_CONFIG = "configs/proj/shapes/videococa.py:video={variant},mode=lit"
VARIANTS = ("attentional_pooler", "factorized", "joint_space_time", "mean_pool")
TOKENIZER_VOCAB = 256
QUICK_DATA = dict(num_train=256, num_validation=32, num_test=64)  # shapes_video sizes, --quick.
QUICK_STEPS = dict(image=60, video=40)
STUDY_VIDEO_STEPS = 200  # Per variant in `study` (half the main job's): 4 variants in ~30 min.


VIEWS = ("shapes_video/video", "shapes_video/image")


def _datasets(quick: bool) -> dict:
  """Builds the shapes_video views if absent; returns the data-dict fields selecting them."""
  from videococa.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  overrides = QUICK_DATA if quick else None
  for view in VIEWS:
    datasets.ensure_prepared(datasets.get_builder(view, config_overrides=overrides))
  return dict(config_overrides=overrides) if quick else {}


def _tokenizer(job: str, data_fields: dict) -> str:
  """Trains the job's SentencePiece model on both views' training captions (once)."""
  path = os.path.join(job, "tokenizer.model")
  if os.path.exists(path):
    return path
  from videococa.data import datasets, tokenizer  # pylint: disable=g-import-not-at-top
  texts = []
  for view in VIEWS:
    builder = datasets.get_builder(view, config_overrides=data_fields.get("config_overrides"))
    texts += list(tokenizer.captions_from_builder(builder, "train"))
  tokenizer.train(texts, TOKENIZER_VOCAB, os.path.join(job, "tokenizer"))
  console(f"Trained a {TOKENIZER_VOCAB}-piece tokenizer on {len(texts)} captions: {path}")
  return path


def _with_data(config: ml_collections.ConfigDict, tokenizer_path: str, data_fields: dict,
               quick: bool, steps: int) -> ml_collections.ConfigDict:
  """The job's tokenizer and (for --quick) the small datasets and short schedule."""
  config.input.tokenizer = tokenizer_path
  config.input.tokenizer_vocab_size = 0
  for data in [config.input.data] + [e.data for e in config.get("evals", {}).values()] + [
      e.baseline_captions_from for e in config.get("evals", {}).values()
      if e.get("baseline_captions_from")]:
    data.update(data_fields)
  if quick:
    config.total_steps = steps
    config.log_every = max(steps // 4, 1)
    config.checkpoint_every = steps
    config.optimizer.warmup_steps = steps // 4
  return config


def _train_stage(name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
  start = time.perf_counter()
  console(f"== {name} -> {workdir}")
  summary = train.train(config, workdir)
  if summary["preempted"]:
    console(f"== {name}: preempted at step {summary['end_step']} (checkpoint written); run the "
            "same command again to resume.")
    raise SystemExit(0)
  loss = summary["metrics"].get("loss")
  console(f"== {name}: at step {summary['end_step']}" +
          (f", loss {loss:.4f}" if loss is not None else " (already trained)") +
          f" ({time.perf_counter() - start:.0f}s)")


def _video_stage(job: str, variant: str, init: str, tokenizer_path: str, data_fields: dict,
                 quick: bool, workdir: str, steps: int | None = None) -> None:
  """Trains (and evaluates) VideoCoCa `variant` from `init`; `steps` overrides the schedule."""
  config = config_utils.load_config(VIDEO_CONFIG.format(variant=variant))
  config.init_from = init
  if steps and not quick:
    config.total_steps, config.checkpoint_every = steps, steps
    config.optimizer.warmup_steps = steps // 10
  _with_data(config, tokenizer_path, data_fields, quick, QUICK_STEPS["video"])
  _train_stage(f"VideoCoCa ({variant}, LiT)", config, workdir)


def _prepare(job: str, quick: bool) -> tuple[str, dict, str]:
  """Stages 1-4; returns (tokenizer path, data fields, image CoCa workdir)."""
  data_fields = _datasets(quick)
  tokenizer_path = _tokenizer(job, data_fields)
  image_dir = os.path.join(job, "image_coca")
  config = config_utils.load_config(IMAGE_CONFIG)
  _with_data(config, tokenizer_path, data_fields, quick, QUICK_STEPS["image"])
  _train_stage("Image CoCa pretraining", config, image_dir)
  return tokenizer_path, data_fields, image_dir


def _inflated(job: str, image_dir: str, variant: str) -> str:
  out = os.path.join(job, f"video_init_{variant}")
  if not os.path.isdir(out):
    console(f"== Inflating the image CoCa into a VideoCoCa ({variant}) -> {out}")
    convert.inflate(image_dir, VIDEO_CONFIG.format(variant=variant), out)
  return out


def run_job(job: str, quick: bool) -> str:
  """The main job; returns the path of the report."""
  tokenizer_path, data_fields, image_dir = _prepare(job, quick)
  variant = "attentional_pooler"
  video_dir = os.path.join(job, "video_coca")
  _video_stage(job, variant, _inflated(job, image_dir, variant), tokenizer_path, data_fields,
               quick, video_dir)
  return report.write_report(job, {"Image CoCa pretraining": image_dir,
                                   "VideoCoCa (attentional pooler + temporal embedding, LiT)":
                                   video_dir})


def run_study(job: str, quick: bool) -> str:
  """The four video variants with the same budget, plus the image model as a baseline."""
  tokenizer_path, data_fields, image_dir = _prepare(job, quick)
  study = os.path.join(job, "study")
  stages, rows = {}, []
  for variant in VARIANTS:
    workdir = os.path.join(study, variant)
    _video_stage(job, variant, _inflated(job, image_dir, variant), tokenizer_path, data_fields,
                 quick, workdir, STUDY_VIDEO_STEPS)
    stages[f"VideoCoCa {variant}"] = workdir
  # Baseline: the image CoCa, frames averaged (the mean_pool variant without the patch skip adds
  # no parameters).
  baseline_dir = os.path.join(study, "image_model_mean_pool")
  config = config_utils.load_config(VIDEO_CONFIG.format(variant="mean_pool") + ",patch_skip=False")
  _with_data(config, tokenizer_path, data_fields, quick, QUICK_STEPS["video"])
  if not os.path.isdir(os.path.join(baseline_dir, "evals")):
    checkpoint.save_params(os.path.join(baseline_dir, "checkpoints"),
                           checkpoint.load_params(image_dir)[0], dict(step=0))
    evaluate.evaluate(config, baseline_dir)
  stages["Image CoCa, frames averaged (no video training)"] = baseline_dir
  for name, workdir in stages.items():
    rows.append(dict(model=name, **_headline(workdir)))
  return report.write_report(study, stages, title="videococa: video variant study",
                             extra_tables={"Variant study (held-out test split)": rows})


def _headline(workdir: str) -> dict:
  """Motion top-1, text->video R@1 and CIDEr of a stage's latest evals."""
  import json  # pylint: disable=g-import-not-at-top
  out = {}
  for name, key, label in (("motion", "top1", "motion top-1"), ("retrieval", "t2v_R@1",
                                                                 "text→video R@1"),
                           ("captioning", "cider", "CIDEr")):
    path = os.path.join(workdir, "evals", f"{name}_latest.json")
    if os.path.exists(path):
      with open(path) as f:
        out[label] = json.load(f).get(key)
  return out


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  command = argv[1] if len(argv) > 1 else "job"
  if command not in ("job", "study") or len(argv) > 2:
    raise app.UsageError(f"Unknown command {' '.join(argv[1:])!r}; use no argument (the job) or "
                         "'study'.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  job = os.path.abspath(_WORKDIR.value + ("_quick" if _QUICK.value else ""))
  os.makedirs(job, exist_ok=True)
  start = time.perf_counter()
  path = (run_study if command == "study" else run_job)(job, _QUICK.value)
  console(f"Done in {(time.perf_counter() - start) / 60:.1f} min. Report: {path}")


if __name__ == "__main__":
  cli.run(main)
