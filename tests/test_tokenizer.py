"""Tests of the SentencePiece tokenizer: training, fixed-length encoding, decoding, and the CLI."""
import itertools
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from videococa import config_utils
from videococa.data import tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = [f"a {colour} {shape} is {motion} on a {ground} background" for colour, shape, motion,
          ground in itertools.product(["red", "green", "blue", "yellow"],
                                      ["circle", "square", "triangle"],
                                      ["moving left", "moving right", "bouncing", "spinning"],
                                      ["black", "white"])] + ["a quick fox"]  # A rare 'q', 'k', 'f'.


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  return tokenizer.train(CORPUS, vocab_size=64, out_prefix=tmp_path_factory.mktemp("spm") / "tok")


def test_train_writes_a_model_with_the_special_ids(model_path):
  assert model_path.endswith("tok.model") and os.path.isfile(model_path)
  tok = tokenizer.Tokenizer(model_path)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert 20 < tok.vocab_size <= 64


def test_round_trip(model_path):
  tok = tokenizer.Tokenizer(model_path)
  texts = CORPUS[:3] + ["a blue square is spinning", "a quick fox"]
  ids = tok.encode(texts, max_len=64)
  assert ids.dtype == np.int32 and ids.shape == (5, 64)
  assert tok.decode(ids) == texts
  assert tok.decode([list(row) for row in ids]) == texts  # Lists decode the same.


def test_encode_layout_padding_and_truncation(model_path):
  tok = tokenizer.Tokenizer(model_path)
  ids = tok.encode(["red circle", b"a blue square is spinning on a white background"], max_len=8)
  short = ids[0]
  n = int((short != 0).sum())
  assert short[0] == tok.bos_id and short[n - 1] == tok.eos_id and (short[n:] == 0).all()
  assert 0 not in short[:n] and tok.eos_id not in short[1:n - 1]
  long = ids[1]  # Truncated: BOS, 6 tokens, EOS.
  assert long[0] == tok.bos_id and long[-1] == tok.eos_id and 0 not in long
  assert "a blue square is spinning on a white background".startswith(tok.decode([long])[0])
  with pytest.raises(ValueError, match="max_len"):
    tok.encode(["x"], max_len=1)
  with pytest.raises(TypeError, match="sequence of texts"):
    tok.encode("red circle", max_len=8)


def test_decode_stops_at_eos_and_drops_specials_and_out_of_vocab_ids(model_path):
  tok = tokenizer.Tokenizer(model_path)
  [red] = tok.encode(["red"], max_len=8)
  body = red[1:list(red).index(tok.eos_id)].tolist()
  row = [tok.bos_id, tok.pad_id, *body, tok.vocab_size + 5, tok.eos_id, *body]
  assert tok.decode(np.array([row])) == ["red"]


def test_training_is_deterministic(tmp_path, model_path):
  again = tokenizer.train(CORPUS, vocab_size=64, out_prefix=tmp_path / "sub" / "again")
  assert open(again, "rb").read() == open(model_path, "rb").read()


def test_training_without_text_fails_clearly(tmp_path):
  with pytest.raises(ValueError, match="No text to train"):
    tokenizer.train(["", "  "], vocab_size=64, out_prefix=tmp_path / "none")


def test_missing_model_names_the_path_and_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"absent\.model.*python -m videococa\.data\.tokenizer"):
    tokenizer.Tokenizer(tmp_path / "absent.model")


def test_model_without_bos_is_refused(tmp_path):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  prefix = os.fspath(tmp_path / "nobos")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=prefix,
                                 vocab_size=40, pad_id=0, unk_id=1, bos_id=-1, eos_id=2,
                                 hard_vocab_limit=False, minloglevel=2)
  with pytest.raises(ValueError, match="needs pad=0 and BOS and EOS"):
    tokenizer.Tokenizer(prefix + ".model")


@pytest.fixture(scope="module")
def caption_dataset(tmp_path_factory):
  """A prepared image-caption TFDS dataset directory with 3 examples and 4 captions."""
  from videococa.data import ingest  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("captions")
  for name in ("a", "b", "c"):
    Image.new("RGB", (8, 8)).save(root / f"{name}.png")
  (root / "ann.csv").write_text("image,captions\na.png,red circle|blue square\n"
                                "b.png,green triangle\nc.png,yellow circle\n")
  ingest.ingest_images(root, root / "ann.csv", root / "ds", "caps")
  return root / "ds"


def test_captions_from_directory_and_builder(caption_dataset):
  captions = list(tokenizer.captions_from_directory(caption_dataset))
  assert sorted(captions) == ["blue square", "green triangle", "red circle", "yellow circle"]
  assert len(list(tokenizer.captions_from_directory(caption_dataset, max_examples=1))) in (1, 2)


def test_captions_from_dataset_uses_the_datasets_module(caption_dataset, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import videococa.data  # pylint: disable=g-import-not-at-top
  calls = []
  fake = types.SimpleNamespace(
      get_builder=lambda name, data_dir: calls.append((name, data_dir)) or
      tfds.builder_from_directory(os.fspath(caption_dataset)),
      ensure_prepared=lambda builder: calls.append(builder.name))
  monkeypatch.setitem(sys.modules, "videococa.data.datasets", fake)
  monkeypatch.setattr(videococa.data, "datasets", fake, raising=False)
  captions = list(tokenizer.captions_from_dataset("caps", data_dir="/dd"))
  assert len(captions) == 4 and calls == [("caps", "/dd"), "caps"]


@pytest.mark.slow
def test_cli_trains_from_a_dataset_directory(caption_dataset, tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run(
      [sys.executable, "-m", "videococa.data.tokenizer", f"--dataset_dir={caption_dataset}",
       "--vocab_size=40", f"--out={tmp_path / 'cli'}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert f"wrote {tmp_path / 'cli.model'}: vocab_size=" in result.stdout
  tok = tokenizer.Tokenizer(tmp_path / "cli.model")
  assert tok.decode(tok.encode(["red circle"], max_len=16)) == ["red circle"]


def test_import_does_not_import_tensorflow():
  code = ("import sys; from videococa.data import tokenizer; assert 'tensorflow' not in sys.modules; "
          "assert 'tensorflow_datasets' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_shapes_captions_fit_the_shapes_model_unsplit(tmp_path):
  """The main job's tokenizer (256 pieces) keeps every shapes_video caption, video or image view,
  within the shapes model's text length (no truncated motions or positions)."""
  from videococa.projects.shapes import scenes as shapes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  captions = []
  for _ in range(1500):
    captions += shapes.video_captions(shapes.sample_clip(rng), rng)
    captions += shapes.image_captions(shapes.sample_image(rng), rng)
  path = tokenizer.train(captions[:10000], 256, tmp_path / "spm")
  tok = tokenizer.Tokenizer(path)
  lengths = (tok.encode(captions[10000:], 64) != tokenizer.PAD_ID).sum(axis=1)
  assert lengths.max() <= config_utils.load_config(
      os.path.join(ROOT, "configs/proj/shapes/coca_image.py")).model.max_len + 1, lengths.max()
  assert tok.encode(["a yellow square"], 8)[0, 1:4].tolist() == [
      tok.encode([w], 3)[0, 1] for w in ("a", "yellow", "square")]  # Whole-word pieces.
