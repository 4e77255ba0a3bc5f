"""Tests of the CLIP BPE tokenizer: ids and decoding equal open_clip's, without PyTorch at run time.

The reference is open_clip's own tokenizer module (`open_clip.tokenize` / `SimpleTokenizer`),
loaded from its file without the rest of open_clip (which would take seconds to import).
"""
import hashlib
import importlib.util
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from videococa import errors
from videococa.data import clip_bpe, tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

HAND = [
    "", " ", "   ", "\t", "\n", "\t \n \r\n ", "\u00a0\u3000\u2009",
    "a photo of a cat", "A Photo Of A CAT.", "a red circle moving left on a black background",
    "It's a dog's life; they're here, we've gone, I'm in, you'll see, he'd go, don't!",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D", "o'clock rock'n'roll 'quoted' ''double''",
    "café naïve Ångström façade ÉCOLE niño Straße İstanbul ΑΘΗΝΑ Москва",
    "日本語のテキスト", "中文字符和标点。", "한국어 문장입니다", "カタカナ ひらがな 漢字",
    "😀 👍🏽 👨‍👩‍👧 🇯🇵 ❤️ 🐈‍⬛", "cats😀dogs🐶birds",
    "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "it&#39;s", "&quot;quoted&quot;", "a&nbsp;b",
    "&amp;lt;double&amp;gt;", "&#x1F600; &copy; &eacute;", "&amp;amp;amp;", "& ; &amp",
    "cafÃ©", "Ã¼ber", "doesnâ€™t", "â€œquotedâ€\x9d", "seÃ±or",
    "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t",
    "!!!", "?!?!", "...", "---", "!!!???...,,,;;;", "(a) [b] {c} <d>", "@user #tag $5 100% ^_^ ~~~",
    "wow!", "wow!!", "!wow", "a ! b", "hello!?", "\"quotes\" and 'apostrophes'", "back\\slash/",
    "0", "42", "3.14159", "1,000,000", "2nd 3rd 21st", "x2 v1.0.3 0x1F", "٣٤٥ ४२ ①②③",
    "MiXeD CaSe TeXt WiTh NuMbErS 123", "tabs\tand\nnewlines\r\nand  double  spaces",
    "<start_of_text>", "<end_of_text>", "a <start_of_text> b <end_of_text> c", "<|endoftext|>",
    "zero\u200bwidth\u200djoiner", "e\u0301 combining a\u0308", "\x00\x01\x7f control",
    "ﬁ ligature ﬀ ＦＵＬＬＷＩＤＴＨ", "ß ẞ ǅ ǈ", "\u202eright-to-left override",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious" * 3,
    " ".join(["word"] * 120), "a" * 300, "😀" * 60, "日本" * 80,
    "A long caption that goes on and on, describing every single detail of the scene: the sky is "
    "blue, the grass is green, three dogs are running after a red ball, a child laughs, a car "
    "passes by slowly, clouds drift, and the sun sets behind the distant hills of the valley.",
]

_WORDS = ["a", "the", "cat", "dog", "Video", "PERSON", "running", "Jumps", "over", "blue",
          "kitchen", "playing", "guitar", "of", "and", "on", "is", "woman", "man", "camera"]
_ACCENTED = ["café", "naïve", "Ångström", "ÉCOLE", "niño", "Straße", "İstanbul", "Ünïcödé", "Œuvre"]
_CJK = ["日本語", "中文", "한국어", "カタカナ", "ひらがな", "漢字", "。", "、"]
_EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "🐈", "🎉", "✨"]
_ENTITIES = ["&amp;", "&lt;", "&gt;", "&#39;", "&quot;", "&nbsp;", "&amp;lt;", "&#x1F600;",
             "&copy;", "&eacute;"]
_MOJIBAKE = ["cafÃ©", "Ã¼ber", "â€™", "â€œhiâ€\x9d", "Ã±", "doesnâ€™t", "Ã‰cole"]
_CONTRACTIONS = ["it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "cat's",
                 "o'clock", "'s", "'t"]
_PUNCTUATION = "!?.,;:-_()[]{}'\"/\\@#$%^&*~`|<>+="
_SEPARATORS = [" ", " ", " ", "", "\t", "\n", "  ", "\r\n", "\u00a0"]
_CODEPOINT_RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x4FF), (0x590, 0x6FF),
                     (0x900, 0x97F), (0x2000, 0x206F), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
                     (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF)]


def _piece(rng: random.Random) -> str:
  kind = rng.randrange(10)
  if kind == 0:
    return rng.choice(_ACCENTED)
  if kind == 1:
    return rng.choice(_CJK)
  if kind == 2:
    return rng.choice(_EMOJI)
  if kind == 3:
    return rng.choice(_ENTITIES)
  if kind == 4:
    return rng.choice(_MOJIBAKE)
  if kind == 5:
    return "".join(rng.choice(_PUNCTUATION) for _ in range(rng.randint(1, 8)))
  if kind == 6:
    return rng.choice([str(rng.randint(0, 10**rng.randint(1, 9))), f"{rng.uniform(0, 100):.3f}",
                       f"{rng.randint(1, 999):,}000"])
  if kind == 7:
    return rng.choice(_CONTRACTIONS)
  if kind == 8:
    lo, hi = rng.choice(_CODEPOINT_RANGES)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
  word = rng.choice(_WORDS)
  return rng.choice([word, word.upper(), word.capitalize(), word.swapcase()])


def _random_texts(n: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  texts = []
  for i in range(n):
    k = rng.randint(0, 90 if i % 8 == 0 else 20)  # Every 8th is long (often > 77 tokens).
    parts = []
    for _ in range(k):
      parts += [_piece(rng), rng.choice(_SEPARATORS)]
    texts.append("".join(parts))
  return texts


TEXTS = HAND + _random_texts(260)


@pytest.fixture(scope="module")
def ref():
  """open_clip's tokenizer module (tokenize, decode, SimpleTokenizer)."""
  pytest.importorskip("torch")
  spec = importlib.util.find_spec("open_clip")
  if spec is None:
    pytest.skip("open_clip is not installed")
  path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
  try:  # The module alone: `import open_clip` imports models and torchvision (slow).
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
  except ImportError:  # It imports the rest of open_clip in some version: the usual way.
    import open_clip.tokenizer  # pylint: disable=g-import-not-at-top
    return open_clip.tokenizer


@pytest.fixture(scope="module")
def tok():
  return tokenizer.load("clip_bpe")


def test_the_special_ids_and_vocabulary(tok, ref):
  simple = ref.SimpleTokenizer()
  assert isinstance(tok, clip_bpe.ClipBpeTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (49408, 49406, 49407, 0)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (
      simple.vocab_size, simple.sot_token_id, simple.eot_token_id)
  assert tok.path == clip_bpe.DEFAULT_VOCAB


@pytest.mark.parametrize("context_length", [77, 16, 2])
def test_ids_equal_open_clip_tokenize(tok, ref, context_length):
  assert len(TEXTS) >= 300
  ours = tok.encode(TEXTS, context_length)
  theirs = ref.tokenize(TEXTS, context_length=context_length).numpy()
  assert ours.dtype == np.int32 and ours.shape == (len(TEXTS), context_length)
  bad = [t for t, a, b in zip(TEXTS, ours, theirs) if not np.array_equal(a, b)]
  assert not bad, f"{len(bad)} texts differ, e.g. {bad[:3]!r}"
  if context_length == 77:  # The corpus exercises truncation and the edge cases.
    lengths = [len(tok.encode_text(t)) for t in TEXTS]
    assert sum(n > 75 for n in lengths) >= 20 and lengths.count(0) >= 8
    assert (ours == tok.eos_id).any(axis=1).all()


@pytest.mark.parametrize("context_length", [77, 16])
def test_decode_equals_open_clip_decode_without_special_tokens(tok, ref, context_length):
  simple = ref.SimpleTokenizer()
  ids = tok.encode(TEXTS, context_length)
  expected = []
  for row in ids.tolist():
    row = row[:row.index(tok.eos_id)]
    expected.append(simple.decode([t for t in row if t != tok.bos_id]).strip())
  assert tok.decode(ids) == expected
  # Id 0 before the EOS ('!' not ending a word) is kept, as open_clip decodes it.
  assert sum(0 in row[:row.index(tok.eos_id)] for row in ids.tolist()) >= 5
  # Without special tokens in the text, nothing is dropped: open_clip's decode of the ids.
  row = ids[HAND.index("a photo of a cat")]
  assert tok.decode_text(row[1:list(row).index(tok.eos_id)]) == "a photo of a cat "


def test_decode_stops_at_eos_and_drops_bos_pad_and_ids_past_the_vocabulary(tok):
  ids = tok.encode(["a photo of a cat", "two dogs!"], 12)
  assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
  assert ids[1, 3:5].tolist() == [256, 49407]  # A word-final '!' is '!</w>'=256, not pad 0.
  assert tok.decode(ids) == ["a photo of a cat", "two dogs !"]
  row = [49406, 320, 1125, 49408, 50000, -1, 539, 320, 2368, 49407, 320, 320]
  assert tok.decode(np.array([row])) == ["a photo of a cat"]
  assert tok.decode([[49406, 320, 2368, 0, 0]]) == ["a cat"]  # No EOS: trailing pads dropped.
  ids = tok.encode(["!@# hi !~"], 10)
  assert ids[0, :7].tolist() == [49406, 0, 39397, 1883, 0, 349, 49407]  # 0 is also '!'.
  assert tok.decode(ids) == ["!@# hi !~"]
  assert tok.decode(np.zeros((2, 0), np.int32)) == ["", ""]


def test_pipeline_style_batches_of_bytes(tok):
  texts = np.array([[b"a photo of a cat", "caf\u00e9 &amp; cr\u00e8me".encode()],
                    [b"", b"two dogs!"]], dtype=object)
  # As the `tokenize` pp op calls it (tf.numpy_function hands over bytes).
  ids = tok.encode(texts.ravel().tolist(), 8).reshape(texts.shape + (8,))
  strings = [t.decode() for t in texts.ravel()]
  assert ids.shape == (2, 2, 8) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids.reshape(4, 8), tok.encode(strings, 8))
  assert tok.decode(ids.reshape(4, 8)) == ["a photo of a cat", "café & crème", "", "two dogs !"]
  with pytest.raises(TypeError, match="single one"):
    tok.encode("a cat", 8)
  with pytest.raises(ValueError, match="room for BOS and EOS"):
    tok.encode(["a cat"], 1)


def test_load_picks_the_tokenizer_from_the_spec(tmp_path):
  assert tokenizer.is_clip_bpe("clip_bpe") and tokenizer.is_clip_bpe("/x/v.txt.gz")
  assert not tokenizer.is_clip_bpe("/x/spm.model")
  copy = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
  with open(clip_bpe.DEFAULT_VOCAB, "rb") as src:
    copy.write_bytes(src.read())
  from_file = tokenizer.load(copy)
  assert isinstance(from_file, clip_bpe.ClipBpeTokenizer) and from_file.path == str(copy)
  np.testing.assert_array_equal(from_file.encode(["a cat"], 5),
                                tokenizer.load("clip_bpe").encode(["a cat"], 5))
  with pytest.raises(errors.MissingPathError, match="No CLIP BPE vocabulary"):
    tokenizer.load(tmp_path / "absent.txt.gz")
  with pytest.raises(errors.MissingPathError, match="No SentencePiece model"):
    tokenizer.load(tmp_path / "absent.model")


def test_the_vocabulary_ships_with_the_package():
  assert clip_bpe.DEFAULT_VOCAB == os.path.join(ROOT, "videococa", "data", "assets",
                                                "bpe_simple_vocab_16e6.txt.gz")
  with open(clip_bpe.DEFAULT_VOCAB, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == VOCAB_SHA256
  with open(os.path.join(os.path.dirname(clip_bpe.DEFAULT_VOCAB), "LICENSE")) as f:
    notice = f.read()
  assert "MIT License" in notice and "OpenAI" in notice


def test_import_and_use_without_torch(tmp_path):
  """Importing and using the tokenizers, from another directory, loads no torch or open_clip."""
  code = ("import sys, videococa.data.clip_bpe, videococa.data.tokenizer as t\n"
          "tok = t.load('clip_bpe')\n"
          "assert tok.encode(['a cat'], 4).tolist() == [[49406, 320, 2368, 49407]]\n"
          "bad = [m for m in ('torch', 'open_clip', 'tensorflow') if m in sys.modules]\n"
          "assert not bad, bad\n")
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
