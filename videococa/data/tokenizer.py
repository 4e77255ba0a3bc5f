r"""Caption tokenizers: SentencePiece (trained from a dataset's captions) and CLIP's BPE.

`load(spec)` opens either from a config value (`config.input.tokenizer`):

  load('/tmp/tok/spm.model')  # A SentencePiece model: `Tokenizer`.
  load('clip_bpe')            # CLIP's BPE with the vocabulary shipped in videococa/data/assets/
                              # (ids as open_clip.tokenize): `clip_bpe.ClipBpeTokenizer`.
  load('/x/bpe_simple_vocab_16e6.txt.gz')  # CLIP's BPE with that vocabulary file.

Both have `encode(texts, max_len)` -> int32 [B, max_len], `decode(ids)` -> list of str, and
`vocab_size`, `pad_id`, `bos_id`, `eos_id`, `path`; code that runs with either takes the special
ids from the tokenizer object (the module constants below are SentencePiece's).

SentencePiece token ids: pad=0, unk=1, bos=2, eos=3 for models trained here. A caption is
encoded as [BOS, tokens..., EOS, PAD...]; any existing SentencePiece `.model` with pad=0 and BOS/EOS
pieces works too.

  python -m videococa.data.tokenizer --dataset=shapes_video --vocab_size=1000 --out=/tmp/tok/spm
  python -m videococa.data.tokenizer --dataset_dir=/data/msrvtt --vocab_size=8000 --out=/tmp/spm

writes /tmp/tok/spm.model and prints its vocabulary size and a round-trip example.

This module imports TensorFlow only inside the functions that read a dataset's captions, so the
model and decoding side can tokenize without it.
"""
import io
import os
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from videococa import cli, errors
from videococa.data import clip_bpe

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# SentencePiece's training result depends on its thread count: fixed, so that it is deterministic.
_TRAIN_THREADS = 16
_TRAIN_HINT = ("train one with `python -m videococa.data.tokenizer --dataset=NAME "
               "--vocab_size=N --out=PATH_PREFIX`")


class Tokenizer:
  """A SentencePiece model (file) with fixed-length [BOS, ..., EOS, PAD...] encoding."""

  def __init__(self, model_path):
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
      raise errors.MissingPathError(f"No SentencePiece model at {model_path}: {_TRAIN_HINT}, or "
                                    "pass the path of an existing .model file.")
    self.path = model_path
    try:
      self._sp = spm.SentencePieceProcessor(model_file=model_path)
    except (RuntimeError, OSError) as e:
      raise errors.UserError(f"{model_path} is not a SentencePiece model ({str(e).strip()}): "
                             f"{_TRAIN_HINT}, or give 'clip_bpe' for CLIP's BPE.") from None
    ids = {"pad": self._sp.pad_id(), "bos": self._sp.bos_id(), "eos": self._sp.eos_id()}
    if ids["pad"] != PAD_ID or ids["bos"] < 0 or ids["eos"] < 0:
      raise errors.UserError(f"SentencePiece model {model_path} has ids {ids} (-1: none), but "
                             f"needs pad=0 and BOS and EOS pieces: {_TRAIN_HINT}.")

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  def encode(self, texts, max_len):
    """Tokenizes a batch of texts.

    Args:
      texts: sequence of str (or UTF-8 bytes) of length B.
      max_len: the output length (>= 2); longer texts are truncated, keeping their EOS.

    Returns:
      int32 [B, max_len]: [BOS, tokens..., EOS, PAD...] per text.
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError(f"encode takes a sequence of texts, got a single one: {texts!r}")
    if max_len < 2:
      raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}.")
    texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
    out = np.full((len(texts), max_len), PAD_ID, np.int32)
    for row, ids in zip(out, self._sp.encode(texts)):
      seq = [self.bos_id, *ids[:max_len - 2], self.eos_id]
      row[:len(seq)] = seq
    return out

  def decode(self, ids):
    """Detokenizes a batch: int [B, L] (NumPy, JAX or lists) -> list of B str.

    Each row stops at its first EOS; BOS, PAD and ids past the vocabulary (a model's embedding
    table may be padded beyond it) are dropped.
    """
    texts = []
    for row in np.asarray(ids).tolist():
      tokens = []
      for t in row:
        if t == self.eos_id:
          break
        if t not in (PAD_ID, self.bos_id) and 0 <= t < self.vocab_size:
          tokens.append(t)
      texts.append(self._sp.decode(tokens))
    return texts


def is_clip_bpe(spec) -> bool:
  """Whether a tokenizer spec names CLIP's BPE ('clip_bpe' or a '*.txt.gz' vocabulary path)."""
  spec = os.fspath(spec)
  return spec == clip_bpe.NAME or spec.endswith(clip_bpe.VOCAB_SUFFIX)


def load(spec):
  """The tokenizer a spec names: 'clip_bpe' (CLIP's BPE, shipped vocabulary), the path of a CLIP
  vocabulary '*.txt.gz', or the path of a SentencePiece '.model'.

  Returns:
    A `clip_bpe.ClipBpeTokenizer` or a `Tokenizer`; both encode to [BOS, ..., EOS, PAD...].
  """
  spec = os.fspath(spec)
  if spec == clip_bpe.NAME:
    return clip_bpe.ClipBpeTokenizer()
  if is_clip_bpe(spec):
    return clip_bpe.ClipBpeTokenizer(spec)
  return Tokenizer(spec)


def train(texts: Iterable[str], vocab_size: int, out_prefix, model_type="bpe",
          character_coverage=1.0) -> str:
  """Trains a SentencePiece model in memory and writes it to `out_prefix`.model.

  Deterministic (same texts and arguments: same model bytes) and quiet. `vocab_size` is an upper
  bound: a corpus too small for it gets a smaller vocabulary.

  Args:
    texts: the training corpus, one caption per item (empty ones are ignored).
    vocab_size: the vocabulary size to aim for, the 4 special pieces included.
    out_prefix: the output path without '.model'; its folder is created.
    model_type: 'bpe' (default) or 'unigram'. On a small caption corpus with a small vocabulary
      unigram prunes far below `vocab_size` and splits common words: on shapes_video at 256 it
      keeps 123 pieces ('yellow' -> 'y', 'el', 'low'), 18.3 tokens per caption and 7% of captions
      over 24 tokens (44% of the image captions), against 256 pieces and 11.6 tokens (max 20)
      with BPE, whose merges make every frequent word one piece.
    character_coverage: the share of characters (by count) given their own piece; the rest
      become unk. 1.0 keeps every character of a small alphabet (e.g. English captions, where a
      rare letter would otherwise be lost); ~0.9995 suits large alphabets (Chinese, Japanese).

  Returns:
    The path of the written .model file.
  """
  corpus = [t for t in texts if t.strip()]  # SentencePiece holds the corpus in memory anyway.
  if not corpus:
    raise errors.UserError(f"No text to train the tokenizer {out_prefix}.model on.")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage, pad_id=PAD_ID,
      unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, hard_vocab_limit=False,
      num_threads=_TRAIN_THREADS, minloglevel=2)
  path = os.fspath(out_prefix) + ".model"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(model.getvalue())
  return path


def captions_from_dataset(name, split="train", data_dir=None, max_examples=None) -> Iterator[str]:
  """The captions of a registered TFDS dataset (prepared first if needed), in dataset order."""
  from videococa.data import datasets  # pylint: disable=g-import-not-at-top
  builder = datasets.get_builder(name, data_dir)
  datasets.ensure_prepared(builder)
  return captions_from_builder(builder, split, max_examples)


def captions_from_directory(dataset_dir, split="train", max_examples=None) -> Iterator[str]:
  """The captions of a prepared TFDS dataset directory (e.g. written by videococa.data.ingest)."""
  from videococa.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return captions_from_builder(datasets.get_builder_from_directory(os.fspath(dataset_dir)), split,
                               max_examples)


def captions_from_builder(builder, split="train", max_examples=None) -> Iterator[str]:
  """Yields every caption of the first `max_examples` (default: all) examples of a split.

  Only the `captions` feature is read and decoded.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if "captions" not in builder.info.features:
    raise errors.UserError(f"Dataset {builder.name} has no 'captions' feature (it has "
                           f"{sorted(builder.info.features)}): pick a caption dataset.")
  ds = builder.as_dataset(split=split, decoders=tfds.decode.PartialDecoding({"captions": True}))
  if max_examples is not None:
    ds = ds.take(max_examples)
  for example in tfds.as_numpy(ds):
    for caption in example["captions"]:
      yield caption.decode("utf-8")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("dataset", None, "Registered TFDS dataset to read captions from.")
  flags.DEFINE_string("dataset_dir", None, "Or: a prepared TFDS dataset directory.")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir for --dataset.")
  flags.DEFINE_string("split", "train", "Split to read captions from.")
  flags.DEFINE_integer("max_examples", None, "Read at most this many examples.")
  flags.DEFINE_integer("vocab_size", None, "Vocabulary size (an upper bound).", required=True)
  flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece model type.")
  flags.DEFINE_string("out", None, "Output path prefix: writes PREFIX.model.", required=True)


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if (FLAGS.dataset is None) == (FLAGS.dataset_dir is None):
    raise app.UsageError("Give exactly one of --dataset=NAME and --dataset_dir=DIR.")
  if FLAGS.dataset is not None:
    captions = captions_from_dataset(FLAGS.dataset, FLAGS.split, FLAGS.data_dir,
                                     FLAGS.max_examples)
  else:
    captions = captions_from_directory(FLAGS.dataset_dir, FLAGS.split, FLAGS.max_examples)
  captions = list(captions)
  if not captions:
    raise app.UsageError(f"No captions in split {FLAGS.split!r} of "
                         f"{FLAGS.dataset or FLAGS.dataset_dir}.")
  path = train(captions, FLAGS.vocab_size, FLAGS.out, FLAGS.model_type)
  tok = Tokenizer(path)
  ids = tok.encode(captions[:1], max_len=64)
  print(f"wrote {path}: vocab_size={tok.vocab_size} (from {len(captions)} captions)")
  print(f"{captions[0]!r} -> {ids[0][ids[0] != PAD_ID].tolist()} -> {tok.decode(ids)[0]!r}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
