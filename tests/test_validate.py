"""Config validation (`videococa.train.validate`): every bad value of the table is one UserError
naming the field and a valid value, found before anything is built; every shipped recipe passes."""
import glob
import os
import subprocess
import sys

import pytest

from videococa import config_utils, errors
from videococa.train import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/coca.py:tiny"

# (override path, bad value, what the message must contain).
BAD = [
    ("total_steps", 0, "config.total_steps=0 must be >= 1"),
    ("total_steps", 2.5, "config.total_steps=2.5 must be an integer"),
    ("log_every", -1, "config.log_every=-1 must be >= 1"),
    ("checkpoint_every", 0, "config.checkpoint_every=0 must be >= 1"),
    ("keep_checkpoints", 0, "config.keep_checkpoints=0 must be >= 1"),
    ("max_consecutive_nonfinite", 0, "must be >= 1"),
    ("input.batch_size", 0, "config.input.batch_size=0 must be >= 1"),
    ("input.num_frames", 0, "config.input.num_frames=0 must be >= 1"),
    ("optimizer.lr", 0.0, "config.optimizer.lr=0.0 must be > 0.0"),
    ("optimizer.lr", -1e-3, "must be > 0.0"),
    ("optimizer.warmup_steps", -5, "must be >= 0"),
    ("optimizer.warmup_steps", 500, "config.optimizer.warmup_steps=500 must be below "
     "config.total_steps=200; e.g. --config.optimizer.warmup_steps=4"),
    ("optimizer.b1", 1.5, "config.optimizer.b1=1.5 must be <= 1.0"),
    ("optimizer.b2", -0.1, "must be >= 0.0"),
    ("optimizer.weight_decay", -1.0, "must be >= 0.0"),
    ("optimizer.name", "sgd", "config.optimizer.name='sgd' choose one of ['adamw', 'adafactor']"),
    ("optimizer.decay", "step", "choose one of ['cosine', 'linear', 'constant']"),
    ("loss.label_smoothing", 2.0, "must be <= 1.0"),
    ("loss.vocab_chunk_len", 0, "must be >= 1"),
    ("training_mode", "lora", "config.training_mode='lora' choose one of ['ft', 'lit'"),
    ("model.dtype", "float8", "choose one of ['float32', 'bfloat16', 'float16']"),
    ("model.attention_impl", "flash", "choose one of ['auto', 'xla', 'cudnn']"),
    ("model.remat_policy", "some", "choose one of ['none', 'full', 'dots', 'dots_no_batch']"),
    ("model.mlp_act", "swish", "choose one of ['gelu'"),
    ("model.pooler.mode", "max", "choose one of ['cascade', 'parallel', 'single', 'class_token']"),
    ("model.vision.patch_size", 7, "config.model.vision.image_size=32 is not divisible by "
     "config.model.vision.patch_size=7 (patches tile the image); e.g. "
     "--config.model.vision.patch_size=4"),
    ("model.vision.patch_size", 0, "must be >= 1"),
    ("model.vision.image_size", -32, "must be >= 1"),
    ("model.vision.num_heads", 3, "config.model.vision.width=32 is not divisible by "
     "config.model.vision.num_heads=3 (heads split the width); e.g. "
     "--config.model.vision.num_heads=2"),
    ("model.text.num_heads", 5, "config.model.text.width=32 is not divisible by"),
    ("model.decoder.num_heads", 6, "config.model.text.width=32 is not divisible by "
     "config.model.decoder.num_heads=6"),
    ("model.vision.depth", 0, "must be >= 1"),
    ("model.max_len", 1, "config.model.max_len=1 must be >= 2"),
    ("model.vocab_size", 0, "must be >= 2"),
    ("model.embed_dim", 0, "must be >= 1"),
    ("model_name", "cocoa", "config.model_name='cocoa' names no module videococa/models/NAME.py"),
    ("log_every", 7, "config.checkpoint_every=50 must be a multiple of config.log_every=7"),
    ("mesh.data", 0, "axis sizes are integers >= 1, or -1"),
    ("seed", -1, "config.seed=-1 must be >= 0"),
]


def _set(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for key in parents:
    node = node[key]
  with node.ignore_type():
    node[leaf] = value


@pytest.mark.parametrize("path,value,expected", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_values_are_one_error_naming_the_field(path, value, expected):
  config = config_utils.load_config(TINY)
  _set(config, path, value)
  with pytest.raises(errors.UserError) as error:
    validate.validate(config)
  message = str(error.value)
  assert expected in message and "\n" not in message, message


def test_video_relations():
  config = config_utils.load_config("configs/videococa.py:tiny,video=factorized")
  config.input.num_frames = 8
  with pytest.raises(errors.UserError, match=r"config.input.num_frames=8 exceeds "
                     r"config.model.video.num_frames=4 \(the length of the temporal embedding"):
    validate.validate(config)
  config = config_utils.load_config("configs/videococa.py:tiny")
  config.model.video.variant = "late_fusion"
  with pytest.raises(errors.UserError, match=r"config.model.video.variant='late_fusion' choose "
                     r"one of \['attentional_pooler', 'factorized'"):
    validate.validate(config)


@pytest.mark.parametrize("spec", [
    "configs/coca.py:tiny", "configs/coca.py:base", "configs/coca.py:large",
    "configs/coca.py:giant", "configs/videococa.py:tiny", "configs/videococa.py:videocc3m",
    "configs/videococa.py:finetune,video=factorized,mode=frozen_ft",
    "configs/videococa.py:finetune,runlocal", "configs/videococa.py:videocc3m,runlocal",
    "configs/coca.py:base,runlocal",
    "configs/videococa.py:videocc3m,video=joint_space_time,temporal=sincos",
    "configs/proj/shapes/coca_image.py", "configs/proj/shapes/videococa.py",
    "configs/proj/shapes/videococa.py:video=mean_pool,runlocal"])
def test_every_recipe_is_valid(spec):
  validate.validate(config_utils.load_config(spec))


def test_every_config_file_is_covered():
  """The recipes above include every config file (a new one must be added there)."""
  files = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                                       recursive=True)}
  covered = {spec.partition(":")[0] for spec in (
      test_every_recipe_is_valid.pytestmark[0].args[1])}
  assert files - covered == {"configs/zeroshot.py"}  # Needs a checkpoint: test_configs.py.


def test_cli_fails_in_one_line_before_creating_anything(tmp_path):
  """`total_steps=0` exits 2 with one line, and nothing is created in the workdir."""
  workdir = tmp_path / "workdir"
  result = subprocess.run(
      [sys.executable, "-m", "videococa.train", f"--config={TINY}", f"--workdir={workdir}",
       "--config.total_steps=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines[-1] == "error: config.total_steps=0 must be >= 1.", lines
  assert "Traceback" not in result.stderr
  assert not workdir.exists() or not any(workdir.iterdir())
