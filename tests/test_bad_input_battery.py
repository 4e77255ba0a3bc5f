"""A battery of bad inputs across the command-line tools, as a new user would type them.

Each case must exit with status 2 and print exactly one `error:` line naming what to fix, with no
traceback; they are all caught before anything compiles. The training cases share one workdir, and
a correct run in it afterwards must still succeed: a bad input leaves nothing behind that breaks
the next run.
"""
import concurrent.futures
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/coca.py:tiny"


def _cases(tmp):
  """(module, arguments, text the error line must contain)."""
  work = f"--workdir={tmp / 'work'}"
  train = [
      ("--config.total_steps=0", "config.total_steps=0 must be >= 1"),
      ("--config.optimizer.lr=-1.0", "config.optimizer.lr=-1.0 must be > 0.0"),
      ("--config.optimizer.name=sgd", "choose one of ['adamw', 'adafactor']"),
      ("--config.optimizer.warmup_steps=1000", "must be below config.total_steps=200"),
      ("--config.model.remat_policy=some", "config.model.remat_policy='some' choose one of"),
      ("--config.model.attention_impl=flash", "choose one of ['auto', 'xla', 'cudnn']"),
      ("--config.model.vision.patch_size=7", "is not divisible by config.model.vision.patch_size"),
      ("--config.input.batch_size=12", "config.input.batch_size=12 is not a positive multiple"),
      ("--config.mesh.data=16", "needs 16 devices"),
      ("--config.checkpoint_every=7", "must be a multiple of config.log_every=10"),
      ("--config.model_name=cocoa", "config.model_name='cocoa' names no module"),
      ("--config.profile_steps=5,2", "config.profile_steps='5,2'"),
      ("--config.extensions=('no_such.module',)", "config.extensions names 'no_such.module'"),
      ("--config.modle.width=3", "unknown config key 'modle'"),
      ("--config.model.vision.widht=3", "close matches: model.vision.width"),
  ]
  cases = [("videococa.train", [TINY, work, arg], expected) for arg, expected in train]
  (tmp / "broken.py").write_text("def get_config(arg=None):\n  return {\n")
  (tmp / "a_file").write_text("")
  cases += [
      ("videococa.train", ["--config=configs/videococa.py:tiny", work,
                           "--config.training_mode=lora"], "config.training_mode='lora' choose"),
      ("videococa.train", ["--config=configs/nope.py", work], "configs/nope.py"),
      ("videococa.train", ["--config=configs/coca.py:huge", work], "unknown variant 'huge'"),
      ("videococa.train", [f"--config={tmp / 'broken.py'}", work],
       f"{tmp / 'broken.py'}:2: syntax error"),
      ("videococa.train", [TINY, f"--workdir={tmp / 'a_file'}"], "cannot be created or written"),
      ("videococa.train", [TINY, f"--workdir={tmp / 'a_file' / 'sub'}"],
       "cannot be created or written"),
      ("videococa.train", [TINY], "--workdir"),
      ("videococa.tools.evaluate", [TINY, work], "config.evals is empty"),
      ("videococa.tools.evaluate",
       ["--config=configs/zeroshot.py:ckpt=/no/ckpt,msrvtt=/no/data", work],
       "No checkpoint directory at /no/ckpt"),
      ("videococa.tools.evaluate", ["--config=configs/zeroshot.py:ckpt=/x", work],
       "give at least one benchmark folder"),
  ]
  (tmp / "garbage.safetensors").write_bytes(b"\x00" * 64)
  (tmp / "weights.txt").write_text("")
  (tmp / "full").mkdir()
  (tmp / "full" / "x").write_text("")
  convert = "videococa.tools.convert"
  cases += [
      (convert, ["to_the_moon"], "from_open_clip|to_open_clip|inflate"),
      (convert, ["from_open_clip", "--model=coca_ViT-B-99", "--checkpoint=x.pt", "--out=o"],
       "Unknown open_clip model 'coca_ViT-B-99'"),
      (convert, ["from_open_clip", "--model=coca_ViT-B-32", "--out=o"], "needs --checkpoint"),
      (convert, ["from_open_clip", "--model=coca_ViT-B-32", f"--checkpoint={tmp / 'no.pt'}",
                 f"--out={tmp / 'o1'}"], "does not exist"),
      (convert, ["from_open_clip", "--model=coca_ViT-B-32",
                 f"--checkpoint={tmp / 'garbage.safetensors'}", f"--out={tmp / 'o2'}"],
       "cannot be read as open_clip weights"),
      (convert, ["from_open_clip", "--model=coca_ViT-B-32", f"--checkpoint={tmp / 'weights.txt'}",
                 f"--out={tmp / 'o3'}"], "unknown state_dict file format"),
      (convert, ["to_open_clip", "--model=coca_ViT-B-32", "--checkpoint=/no/ckpt",
                 f"--out={tmp / 'b.pt'}"], "No checkpoint directory at /no/ckpt"),
      (convert, ["inflate", "--from=/no/ckpt", "--config=configs/videococa.py:tiny",
                 f"--out={tmp / 'o4'}"], "/no/ckpt"),
      (convert, ["from_open_clip", "--model=/no/model.json", "--checkpoint=x.pt", "--out=o"],
       "/no/model.json does not exist"),
  ]
  (tmp / "videos").mkdir()
  (tmp / "images").mkdir()
  (tmp / "nocol.csv").write_text("file,caption\na.mp4,x\n")
  (tmp / "badsplit.csv").write_text("video,caption,split\na.mp4,x,my split\n")
  ingest = "videococa.data.ingest"
  common = ["--name=d", f"--out={tmp / 'd'}"]
  cases += [
      (ingest, ["video", "--videos=/no/videos", "--annotations=a.csv", *common],
       "--videos=/no/videos is not a directory"),
      (ingest, ["video", f"--videos={tmp / 'videos'}", f"--annotations={tmp / 'no.csv'}",
                *common], "no such annotation file"),
      (ingest, ["video", f"--videos={tmp / 'videos'}", f"--annotations={tmp / 'nocol.csv'}",
                *common], "missing column 'video'"),
      (ingest, ["video", f"--videos={tmp / 'videos'}", f"--annotations={tmp / 'badsplit.csv'}",
                *common], "Invalid split 'my split'"),
      (ingest, ["video", f"--videos={tmp / 'videos'}", "--annotations=a.csv", "--num_frames=4",
                "--fps=2", *common], "--num_frames or --fps, not both"),
      (ingest, ["video", f"--videos={tmp / 'videos'}", *common], "needs --annotations"),
      (ingest, ["image", f"--images={tmp / 'images'}", *common], "no class folders"),
      (ingest, ["audio", *common], "video|image"),
      ("videococa.data.tokenizer", ["--dataset_dir=/no/data", "--vocab_size=64",
                                    f"--out={tmp / 'spm'}"], "/no/data"),
  ]
  return cases


def _run(case):
  module, args, _ = case
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.slow
def test_every_bad_input_is_one_error_line_and_exit_2(tmp_path):
  cases = _cases(tmp_path)
  assert len(cases) >= 40
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(_run, cases))
  failures = []
  for (module, args, expected), result in zip(cases, results):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if (result.returncode != 2 or len(errors) != 1 or expected not in errors[0]
        or "Traceback" in result.stderr or lines[-1] != errors[0]):
      failures.append(f"{module} {' '.join(args)}: exit {result.returncode}, "
                      f"expected {expected!r}; stderr tail: {result.stderr[-600:]!r}")
  assert not failures, "\n".join(failures)
  # The training cases' workdir still takes a correct run.
  ok = subprocess.run([sys.executable, "-m", "videococa.train", TINY,
                       f"--workdir={tmp_path / 'work'}", "--config.total_steps=2",
                       "--config.log_every=1", "--config.checkpoint_every=1",
                       "--config.optimizer.warmup_steps=1"], cwd=ROOT,
                      capture_output=True, text=True, timeout=600)
  assert ok.returncode == 0, ok.stderr[-2000:]
