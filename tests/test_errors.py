"""Bad input gives one clear line, not a traceback: `error: <what to change>`, exit status 2.

The command-line paths run `python -m videococa.train` (a few seconds each: the errors come before
anything is compiled); the other checks call the functions in-process.
"""
import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import ft_helpers
from videococa import cli, errors
from videococa.data import ingest, tokenizer
from videococa.train import checkpoint, loop as train, sharding, trainer as trainer_lib, validate

ROOT = ft_helpers.ROOT


def _train_cli(*args):
  return subprocess.run([sys.executable, "-m", "videococa.train", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _assert_one_line_error(result, *fragments):
  """Exit status 2 and a single `error: ...` line holding every fragment, no traceback."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


# ----------------------------------------------------------------------------- Command line.
@pytest.mark.slow
def test_cli_unknown_config_key_lists_the_close_matches(tmp_path):
  result = _train_cli(*ft_helpers.cli_args(tmp_path), "--config.model.vision.widht=64")
  line = _assert_one_line_error(
      result, "unknown config key 'model.vision.widht' in --config.model.vision.widht; close "
      "matches: model.vision.width")
  assert line.count(",") <= 4  # At most 5 suggestions.


@pytest.mark.slow
def test_cli_batch_not_divisible_by_the_data_parallel_size(tmp_path):
  result = _train_cli(*ft_helpers.cli_args(tmp_path, **{"input.batch_size": 12}))
  _assert_one_line_error(result, "config.input.batch_size=12 is not a positive multiple of "
                         "the data-parallel size 8", "use a multiple of 8")


@pytest.mark.slow
def test_cli_checkpoint_of_another_model_names_the_parameter_and_shapes(tmp_path):
  other = ft_helpers.config(**{"mesh.data": 1, "model.vision.mlp_dim": 128})
  trainer = trainer_lib.Trainer(other, sharding.make_mesh(other.mesh, jax.devices()[:1]))
  with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), save_interval_steps=4,
                               max_to_keep=1) as ckpt:
    ckpt.save(4, trainer.init_state(), {"step": 4}, force=True)
  result = _train_cli(*ft_helpers.cli_args(tmp_path))
  line = _assert_one_line_error(result, f"checkpoint {tmp_path / 'checkpoints'} step 4 does not "
                                "match the model: params/visual/encoder/", "start a new --workdir")
  assert "in the checkpoint but the model expects" in line and "128" in line and "64" in line


# ----------------------------------------------------------------------------- In-process.
def test_error_wrapper_exits_2_with_one_line_and_keeps_tracebacks_of_bugs(capsys):
  def user_mistake(argv):
    raise errors.MissingPathError("No tokenizer at /x.model;\n  give another path.")

  with pytest.raises(SystemExit) as e:
    cli.main_wrapper(user_mistake)(["prog"])
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: No tokenizer at /x.model; give another path.\n"

  def bug(argv):
    raise ZeroDivisionError("a bug")

  with pytest.raises(ZeroDivisionError):  # Not a user error: absl prints its traceback.
    cli.main_wrapper(bug)(["prog"])
  assert issubclass(errors.MissingPathError, FileNotFoundError)
  assert issubclass(errors.UserError, ValueError)
  assert issubclass(train.NonFiniteError, errors.UserError)


def test_unknown_config_key_message():
  config = ft_helpers.config()
  keys = cli.config_keys(config)
  assert "model.vision.width" in keys and "optimizer.lr" in keys
  assert cli.close_matches("optimizer.lr_", keys)[0] == "optimizer.lr"
  assert cli.unknown_config_key_message(config, ["--config.total_steps=3"]) is None
  assert cli.unknown_config_key_message(config, ["--config.modle.width=3"]) == (
      "unknown config key 'modle' in --config.modle.width; close matches: model, "
      "model.pooler.mode")
  message = cli.unknown_config_key_message(config, ["--config.zzz=1"])
  assert message.startswith("unknown config key 'zzz' in --config.zzz; the top-level keys are: ")


def test_bad_config_values_fail_before_compiling(tmp_path):
  config = ft_helpers.config(**{"model.vision.patch_size": 7})
  with pytest.raises(errors.UserError, match=r"config.model.vision.image_size=32 is not divisible "
                     r"by config.model.vision.patch_size=7 \(patches tile the image\); e.g. "
                     r"--config.model.vision.patch_size=4"):
    validate.validate(config)
  with pytest.raises(errors.UserError, match="patch_size=7"):
    train.train(config, str(tmp_path))
  video = ft_helpers.config(**{"input.num_frames": 8})
  video.model.video = dict(variant="joint_space_time", num_frames=4)
  with pytest.raises(errors.UserError, match=r"config.input.num_frames=8 exceeds "
                     r"config.model.video.num_frames=4"):
    validate.validate(video)
  with pytest.raises(errors.UserError, match=r"config.input.batch_size=12 is not a positive "
                     r"multiple of the data-parallel size 8"):
    train.train(ft_helpers.config(**{"input.batch_size": 12}), str(tmp_path))
  with pytest.raises(errors.UserError, match=r"needs 16 devices but 8 are available"):
    sharding.make_mesh(dict(data=16))
  assert not os.path.exists(tmp_path / "checkpoints")  # Nothing created by a bad config.


def test_missing_paths(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(errors.MissingPathError, match=rf"config.init_from='{missing}' does not "
                     "exist"):
    train.train(ft_helpers.config(init_from=str(missing)), str(tmp_path / "w"))
  with pytest.raises(errors.MissingPathError, match=f"No checkpoint directory at {missing}"):
    checkpoint.load_params(str(missing))
  with pytest.raises(errors.MissingPathError, match=f"No SentencePiece model at {missing}.model"):
    tokenizer.Tokenizer(missing.with_suffix(".model"))
  with pytest.raises(errors.MissingPathError, match="Config file configs/nope.py does not exist"):
    from videococa import config_utils  # pylint: disable=g-import-not-at-top
    config_utils.load_config("configs/nope.py:tiny")


def test_all_corrupt_ingestion_input_is_a_user_error(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"not an image")
  ann = tmp_path / "ann.csv"
  with open(ann, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image", "caption"])
    writer.writeheader()
    writer.writerows([{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg", "caption": "y"}])
  with pytest.raises(ingest.NoUsableInputs, match="None of the 2 entries") as e:
    ingest.ingest_images(tmp_path, ann, tmp_path / "out", "bad")
  assert isinstance(e.value, errors.UserError)  # -> `error: ...`, exit 2 on the command line.


@pytest.fixture(scope="module")
def image_dataset(tmp_path_factory):
  """A prepared 4-image caption dataset (videococa.data.ingest) and a tokenizer for it."""
  pytest.importorskip("tensorflow_datasets")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("images")
  rows = []
  for i in range(4):
    Image.new("RGB", (40, 40), (60 * i, 10, 10)).save(root / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": f"red square {i}"})
  with open(root / "ann.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image", "caption"])
    writer.writeheader()
    writer.writerows(rows)
  ingest.ingest_images(root, root / "ann.csv", root / "out", "tinyimages")
  tok = tokenizer.train([r["caption"] for r in rows] * 8, 24, root / "spm")
  return root / "out", tok


def _tfds_config(data_dir, tok, split="train"):
  config = ft_helpers.config()
  config.input.update(source="tfds", data=dict(dir=str(data_dir), split=split), shuffle_buffer=1,
                      tokenizer=str(tok), pp=f'decode_image|resize(32)|image_to_clip(1)|'
                      f'choose_caption|tokenize({config.model.max_len + 1})|keep("frames", "text")')
  return config


def test_dataset_errors(image_dataset, tmp_path):
  from videococa.data import datasets, pipeline  # pylint: disable=g-import-not-at-top
  data_dir, tok = image_dataset
  batches = pipeline.make_train_iterator(_tfds_config(data_dir, tok), 2, 0, str(tmp_path))
  assert next(batches)["frames"].shape == (2, 1, 32, 32, 3)  # The dataset itself is fine.
  with pytest.raises(errors.MissingPathError, match=f"Dataset directory {tmp_path / 'nope'} does "
                     "not exist"):
    pipeline.make_train_iterator(_tfds_config(tmp_path / "nope", tok), 2, 0, str(tmp_path))
  with pytest.raises(errors.UserError, match="Unknown dataset name 'no_such_dataset_xyz'"):
    datasets.get_builder("no_such_dataset_xyz")
  config = _tfds_config(data_dir, tmp_path / "none.model")
  with pytest.raises(errors.MissingPathError, match=f"No tokenizer at {tmp_path / 'none.model'}"):
    pipeline.make_train_iterator(config, 2, 0, str(tmp_path))
  with pytest.raises(errors.UserError, match=r"gets no examples of split 'train\[:0\]' .* the "
                     "dataset is empty"):
    pipeline.make_train_iterator(_tfds_config(data_dir, tok, "train[:0]"), 2, 0, str(tmp_path))
  # Every record corrupt: one line naming the dataset, not a tf.data traceback.
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  for name in os.listdir(data_dir):
    data = bytearray((data_dir / name).read_bytes())
    if ".tfrecord" in name:
      data[20:-20] = bytes(b ^ 0x5A for b in data[20:-20])
    (corrupt / name).write_bytes(bytes(data))
  with pytest.raises(errors.UserError, match=f"Corrupt training data in {corrupt}: corrupted "
                     "record at"):
    next(pipeline.make_train_iterator(_tfds_config(corrupt, tok), 2, 0, str(tmp_path)))
  np.testing.assert_array_equal(  # The good dataset still reads the same.
      next(pipeline.make_train_iterator(_tfds_config(data_dir, tok), 2, 0, str(tmp_path)))["text"],
      next(pipeline.make_train_iterator(_tfds_config(data_dir, tok), 2, 0, str(tmp_path)))["text"])


def test_error_line_starts_on_its_own_line_after_a_progress_bar():
  code = ("import tqdm, sys; bar = tqdm.tqdm(total=10, file=sys.stderr); bar.update(3); "
          "from videococa import errors; errors.exit_with('config.x=1 must be >= 2.')")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2
  assert "\nerror: config.x=1 must be >= 2.\n" in result.stderr.replace("\r", "\n")
  assert result.stderr.rstrip("\n").splitlines()[-1] == "error: config.x=1 must be >= 2."
