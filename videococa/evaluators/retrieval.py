"""Zero-shot text<->video retrieval with all reference captions of every clip.

Every caption of every clip is a text; the similarity of text i and clip j is the dot product of
their unit embeddings. Ranks follow the standard multi-caption protocol of
`videococa.evaluators.metrics.retrieval_metrics`: text->video ranks each caption's clip among all
clips; video->text ranks each clip's best-ranked caption among all captions.

Config fields (besides `common.COMMON_FIELDS`; the pp must keep 'captions'):
  text_batch_size: captions per text batch (0: batch_size).

Result: t2v_/v2t_ R@1, R@5, R@10, median_rank, mean_rank; chance_t2v_R@1, chance_v2t_R@1,
num_texts, num_videos and num_examples (= num_videos).
"""
from __future__ import annotations

import numpy as np

from videococa.evaluators import common, metrics


class Retrieval(common.Evaluator):
  """Text->video and video->text retrieval."""
  FIELDS = dict(text_batch_size=0)

  def __init__(self, name, eval_config, **kwargs):
    super().__init__(name, eval_config, **kwargs)
    self.encoder = self.make_encoder(self.cfg["text_batch_size"])

  def similarity(self, params) -> tuple[np.ndarray, np.ndarray]:
    """(similarity float32 `[num_texts, num_videos]`, text_to_video int `[num_texts]`)."""
    video_emb, info = self.encoder.image_embeddings(params, self.batches())
    captions = self.require(info, "captions")
    empty = [i for i, c in enumerate(captions) if not c]
    if empty:
      ids = info.get("id", empty)
      raise ValueError(f"{self.where}: {len(empty)} clips have no caption (e.g. "
                       f"{[ids[i] for i in empty[:5]]}); retrieval needs at least one per clip.")
    texts = [c for caps in captions for c in caps]
    text_to_video = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    text_emb = self.encoder.text_embeddings(params, texts)
    return text_emb @ video_emb.T, text_to_video

  def run(self, params) -> dict:
    similarity, text_to_video = self.similarity(params)
    result = metrics.retrieval_metrics(similarity, text_to_video)
    result["num_examples"] = result["num_videos"]
    return result
