"""Captioning: decode a caption for every clip and score it against the clip's reference captions.

Captions are decoded on the mesh (`videococa.models.decoding.generate`, jitted with the visual
tower), detokenized on the host and scored with `metrics.caption_metrics` (pycocoevalcap BLEU-1..4,
METEOR, ROUGE-L, CIDEr; without Java METEOR is None with the reason in `meteor_status`, never 0).

Config fields (besides `common.COMMON_FIELDS`; the pp must keep 'id' and 'captions'):
  decode: `generate` options: method ('greedy' | 'beam' | 'sample'), max_new_tokens (default:
    config.model.max_len), beam_size, length_penalty, temperature, top_k, top_p, and seed (of the
    'sample' PRNG; 0). Token ids come from the tokenizer.
  show_examples: how many example captions (the first clips) to keep, each with a frame strip PNG.
  baseline_captions_from: None, or dict(name=..., split=...) / dict(dir=..., split=...): also
    score the most common caption of that split (e.g. the training set) as a constant prediction.
  meteor_timeout_s: time limit of the METEOR JVM.

Result: bleu1..bleu4, meteor (float or None), meteor_status, rouge_l, cider, tokenizer,
tokenizer_status, num_captions, num_examples (clips scored), examples
([{id, prediction, references, frames: PNG path relative to workdir/evals}]) and, with
baseline_captions_from, baseline_most_common ({caption, bleu1..4, meteor, meteor_status, rouge_l,
cider, ...}).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable

import jax
import numpy as np

from videococa.evaluators import common, metrics
from videococa.train import sharding

DECODE_KEYS = ("method", "max_new_tokens", "beam_size", "length_penalty", "temperature", "top_k",
               "top_p", "seed")
STRIP_FRAMES = 8  # Frames shown side by side in an example's frame strip (evenly subsampled).


def frame_strip(frames: np.ndarray, num_frames: int = STRIP_FRAMES) -> np.ndarray:
  """uint8 `[T, H, W, 3]` -> `[H, min(T, num_frames) * W, 3]`: frames side by side."""
  index = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), num_frames)).round())
  return np.concatenate(list(frames[index.astype(int)]), axis=1)


def _default_generate() -> Callable[..., dict]:
  from videococa.models import decoding  # pylint: disable=g-import-not-at-top
  return decoding.generate


def _caption_batch(generate_fn, model, decode, params, frames, rng):
  """uint8 frames `[batch, T, H, W, 3]` -> generated tokens int32 `[batch, max_new_tokens]`."""
  _, caption_tokens = common.encode_visual(model, params, frames)
  return generate_fn(model, params, caption_tokens, rng=rng, **decode)["tokens"]


class Captioning(common.Evaluator):
  """Decodes and scores captions; optionally also the most-common-caption baseline."""
  FIELDS = dict(decode={}, show_examples=16, baseline_captions_from=None, meteor_timeout_s=300.0)

  def __init__(self, name, eval_config, *, generate_fn: Callable[..., dict] | None = None,
               **kwargs):
    """`generate_fn`: `videococa.models.decoding.generate` (default) or anything with its
    signature."""
    super().__init__(name, eval_config, **kwargs)
    decode = dict(self.cfg["decode"] or {})
    unknown = sorted(set(decode) - set(DECODE_KEYS))
    if unknown:
      raise ValueError(f"{self.where}.decode has unknown keys {unknown}; known: {DECODE_KEYS}.")
    decode.setdefault("method", "greedy")
    decode.setdefault("max_new_tokens", self.model.max_len)
    if not 1 <= decode["max_new_tokens"] <= self.model.max_len:
      raise ValueError(f"{self.where}.decode.max_new_tokens={decode['max_new_tokens']} must be in "
                       f"[1, config.model.max_len={self.model.max_len}].")
    self.seed = decode.pop("seed", 0)
    tok = self.tokenizer
    self._generate = jax.jit(functools.partial(
        _caption_batch, generate_fn or _default_generate(), self.model,
        dict(decode, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)))
    self.show_examples = int(self.cfg["show_examples"])
    self.baseline_data = self.cfg["baseline_captions_from"]
    if self.baseline_data:
      self.baseline_data = dict(self.baseline_data)
      common.check_data(self.baseline_data, f"{self.where}.baseline_captions_from")
    self._baseline = None  # Cached: the eval split and the baseline's captions never change.

  def predict(self, params) -> tuple[dict[str, str], dict[str, list[str]], list[dict], dict]:
    """Decodes the eval split -> (predictions {id: caption}, references {id: [captions]},
    examples [{id, prediction, references, frames}], images {relative path: frame strip})."""
    predictions, references, examples, images = {}, {}, [], {}
    key = jax.random.key(self.seed)
    for index, batch in enumerate(self.batches()):
      with sharding.use_mesh(self.mesh):
        tokens = common.gather(self._generate(params, batch.frames, jax.random.fold_in(key, index)))
      ids = self.require(batch.info, "id")
      captions = self.require(batch.info, "captions")
      texts = self.tokenizer.decode(tokens)
      local = len(batch.local_frames)  # Rows [0, local) are process 0's: they have frames there.
      for row in np.flatnonzero(batch.info["mask"]):
        clip = ids[row]
        if clip in predictions:
          raise ValueError(f"{self.where}: clip id {clip!r} occurs twice in {self.data}; ids must "
                           "be unique.")
        if not captions[row]:
          raise ValueError(f"{self.where}: clip {clip!r} has no reference caption.")
        predictions[clip], references[clip] = texts[row], list(captions[row])
        if row < local and len(examples) < self.show_examples:
          path = f"{self.name}_examples/{re.sub(r'[^A-Za-z0-9_.-]', '_', clip)}.png"
          examples.append(dict(id=clip, prediction=texts[row], references=references[clip],
                               frames=path))
          if jax.process_index() == 0:
            images[path] = frame_strip(batch.local_frames[row])
    return predictions, references, examples, images

  def baseline(self, references: dict[str, list[str]]) -> dict:
    """Scores of the most common caption of `baseline_captions_from` (computed once)."""
    if self._baseline is None:
      from videococa.data import pipeline, tokenizer  # pylint: disable=g-import-not-at-top
      captions = list(tokenizer.captions_from_builder(
          pipeline.get_data_builder(self.baseline_data), self.baseline_data["split"]))
      constant = metrics.most_common_caption_baseline(captions, references)
      scores = metrics.caption_metrics(constant, references, num_examples=0,
                                       meteor_timeout_s=self.cfg["meteor_timeout_s"])
      scores.pop("examples")
      self._baseline = dict(caption=next(iter(constant.values())), **scores)
    return self._baseline

  def run(self, params) -> dict[str, Any]:
    predictions, references, examples, images = self.predict(params)
    result = metrics.caption_metrics(predictions, references, num_examples=0,
                                     meteor_timeout_s=self.cfg["meteor_timeout_s"])
    result.update(num_examples=len(predictions), examples=examples)
    result[common.IMAGES] = images
    if self.baseline_data:
      result["baseline_most_common"] = self.baseline(references)
    return result
