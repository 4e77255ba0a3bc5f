r"""CLIP's byte-level BPE tokenizer (OpenAI CLIP / open_clip), without PyTorch.

Gives the ids of `open_clip.tokenize` (open_clip's `SimpleTokenizer`, clean='lower', no
reduction), in the interface of the SentencePiece `videococa.data.tokenizer.Tokenizer`:

  tok = ClipBpeTokenizer()                   # The vocabulary shipped in videococa/data/assets/.
  tok.encode(["A photo of a cat."], 77)      # int32 [1, 77]: [49406, 320, 1125, ..., 49407, 0...]
  tok.decode(ids)                            # ['a photo of a cat .']

Text cleaning as CLIP's: `ftfy.fix_text`, `html.unescape` twice, whitespace runs -> one space,
lowercase. Words are split with CLIP's regex and each word's UTF-8 bytes are BPE-merged with the
48,894 merges of `bpe_simple_vocab_16e6.txt.gz`. Ids: 0..255 the byte symbols, 256..511 the same
ending a word ('</w>'), then the merges, then `<start_of_text>`=49406 (BOS) and
`<end_of_text>`=49407 (EOS): 49,408 in all. Padding is id 0, which is also the symbol '!' not
ending a word (as in CLIP: '!@#' -> [0, 39397]; a word-final '!' is '!</w>'=256). Padding only
ever follows the EOS (or ends a row), so `decode` keeps a 0 before the EOS as '!'. A text longer
than `max_len` keeps its first `max_len - 2` tokens and its EOS, as open_clip does.

The vocabulary file is OpenAI CLIP's (MIT license; see assets/LICENSE). This module needs `ftfy`
and `regex` (not PyTorch or open_clip).
"""
from __future__ import annotations

import functools
import gzip
import html
import os
from typing import Sequence

import ftfy
import numpy as np
import regex

from videococa import errors

NAME = "clip_bpe"  # The tokenizer spec (config.input.tokenizer) of the shipped vocabulary.
VOCAB_SUFFIX = ".txt.gz"  # A spec ending with this is the path of another CLIP vocabulary file.
DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                             "bpe_simple_vocab_16e6.txt.gz")
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
_NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file.
_WORD_CACHE_SIZE = 1 << 17  # BPE results kept per tokenizer (words; a caption corpus has fewer).
_WORD_END = "</w>"


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
  """CLIP's (GPT-2's) reversible map of the 256 byte values to printable characters."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def clean(text: str) -> str:
  """CLIP's text cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lowercase."""
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


@functools.lru_cache(maxsize=4)
def _load_vocab(path: str) -> tuple[tuple[str, ...], dict[tuple[str, str], int]]:
  """(id -> symbol, merge pair -> rank) of a CLIP vocabulary file."""
  with gzip.open(path) as f:
    lines = f.read().decode("utf-8").split("\n")
  merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
  if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
    raise errors.UserError(f"{path} is not a CLIP BPE vocabulary: it needs a header line and "
                           f"{_NUM_MERGES} merge lines of two symbols each.")
  byte_symbols = list(bytes_to_unicode().values())
  symbols = (byte_symbols + [s + _WORD_END for s in byte_symbols] + ["".join(m) for m in merges]
             + list(SPECIAL_TOKENS))
  return tuple(symbols), {m: rank for rank, m in enumerate(merges)}


class ClipBpeTokenizer:
  """CLIP's BPE with fixed-length [BOS, ..., EOS, PAD...] encoding; ids equal open_clip's."""

  def __init__(self, vocab_path: str | os.PathLike | None = None):
    path = os.fspath(vocab_path) if vocab_path is not None else DEFAULT_VOCAB
    if not os.path.isfile(path):
      raise errors.MissingPathError(
          f"No CLIP BPE vocabulary at {path}: give the path of a bpe_simple_vocab_16e6.txt.gz, or "
          f"'{NAME}' for the one shipped with videococa.")
    self.path = path
    self._symbols, self._ranks = _load_vocab(path)
    self._ids = {s: i for i, s in enumerate(self._symbols)}
    self._byte_encoder = bytes_to_unicode()
    self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
    self._bos, self._eos = (self._ids[t] for t in SPECIAL_TOKENS)
    special = "|".join(SPECIAL_TOKENS)
    self._pattern = regex.compile(
        special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE)
    self._word_ids = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._word_ids_uncached)

  def __repr__(self):
    return f"ClipBpeTokenizer({self.path!r})"

  @property
  def vocab_size(self) -> int:
    return len(self._symbols)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def bos_id(self) -> int:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  def _bpe(self, word: str) -> list[str]:
    """The BPE symbols of one byte-encoded word (CLIP's merge loop: lowest rank first)."""
    parts = list(word[:-1]) + [word[-1] + _WORD_END]
    ranks = self._ranks
    while len(parts) > 1:
      pairs = set(zip(parts, parts[1:]))
      best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
      if best not in ranks:
        break
      first, second = best
      merged, i = [], 0
      while i < len(parts):
        if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return parts

  def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
    if word in SPECIAL_TOKENS:  # Their literal text in a caption (as in CLIP).
      return (self._ids[word],)
    encoded = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
    return tuple(self._ids[s] for s in self._bpe(encoded))

  def encode_text(self, text: str | bytes) -> list[int]:
    """The ids of one text, without BOS/EOS (open_clip's `SimpleTokenizer.encode`)."""
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    ids = []
    for word in self._pattern.findall(clean(text)):
      ids.extend(self._word_ids(word))
    return ids

  def encode(self, texts: Sequence[str | bytes], max_len: int) -> np.ndarray:
    """Tokenizes a batch of texts.

    Args:
      texts: sequence of str (or UTF-8 bytes) of length B.
      max_len: the output length (>= 2); longer texts are truncated, keeping their EOS.

    Returns:
      int32 [B, max_len]: [BOS, tokens..., EOS, PAD...] per text (= open_clip.tokenize(texts,
      context_length=max_len)).
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError(f"encode takes a sequence of texts, got a single one: {texts!r}")
    if max_len < 2:
      raise ValueError(f"max_len must leave room for BOS and EOS, got {max_len}.")
    out = np.full((len(texts), max_len), self.pad_id, np.int32)
    for row, text in zip(out, texts):
      seq = [self._bos, *self.encode_text(text)[:max_len - 2], self._eos]
      row[:len(seq)] = seq
    return out

  def decode_text(self, ids: Sequence[int]) -> str:
    """open_clip's `SimpleTokenizer.decode`: every id's symbol, '</w>' -> ' ', nothing dropped."""
    chars = "".join(self._symbols[i] for i in ids)
    return bytearray(self._byte_decoder[c] for c in chars).decode(
        "utf-8", errors="replace").replace(_WORD_END, " ")

  def decode(self, ids) -> list[str]:
    """Detokenizes a batch: int [B, L] (NumPy, JAX or lists) -> list of B str.

    Each row stops at its first EOS (a row without one loses its trailing PADs); BOS and ids past
    the vocabulary (a model's embedding table may be padded beyond it) are dropped; the text is
    open_clip's decode of the remaining ids, stripped (words are separated by single spaces,
    punctuation is its own word: 'a cat .'). Id 0 before the EOS is CLIP's '!' symbol, not PAD
    (PAD only follows the EOS, and decoding never generates it), and is kept.
    """
    texts = []
    for row in np.asarray(ids).tolist():
      if self._eos in row:
        row = row[:row.index(self._eos)]
      else:
        while row and row[-1] == self.pad_id:
          row.pop()
      tokens = [t for t in row if t != self._bos and 0 <= t < self.vocab_size]
      texts.append(self.decode_text(tokens).strip())
    return texts
