"""Tests of videococa.evaluators.metrics against hand-computed values and pycocoevalcap itself."""
import shutil

import numpy as np
import pytest

from videococa.evaluators import metrics

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="no Java runtime")

# Lowercase, punctuation-free captions: both tokenizers leave them unchanged, so the scorers can
# be called directly on them as the reference.
PREDICTIONS = {
    "v0": "a man is playing a guitar",
    "v1": "a woman is cooking in a kitchen",
    "v2": "a dog runs on the grass",
}
REFERENCES = {
    "v0": ["a man plays the guitar", "a person is playing a guitar on stage"],
    "v1": ["a woman cooks food in the kitchen", "someone is cooking"],
    "v2": ["a dog is running on grass", "a brown dog runs in a field", "the dog plays outside"],
}


def _reference_scores(predictions, references, with_meteor):
  """pycocoevalcap's scorers called directly on already tokenized captions."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  res = {k: [v] for k, v in predictions.items()}
  gts = {k: list(v) for k, v in references.items()}
  bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
  scores = {f"bleu{n}": b for n, b in enumerate(bleu, start=1)}
  scores["rouge_l"] = Rouge().compute_score(gts, res)[0]
  scores["cider"] = Cider().compute_score(gts, res)[0]
  if with_meteor:
    from pycocoevalcap.meteor.meteor import Meteor
    scores["meteor"] = Meteor().compute_score(gts, res)[0]
  return scores


def test_classification_metrics_hand_computed():
  scores = np.array([
      [0.9, 0.1, 0.0, 0.0],  # cat: rank 1, predicted cat.
      [0.4, 0.4, 0.1, 0.1],  # cat: tied with dog -> rank 2, predicted dog (pessimistic).
      [0.1, 0.3, 0.6, 0.0],  # dog: rank 2, predicted bird.
      [0.3, 0.2, 0.5, 0.4],  # dog: rank 4, predicted bird.
      [0.1, 0.2, 0.7, 0.0],  # bird: rank 1, predicted bird.
  ])
  labels = np.array([0, 0, 1, 1, 2])
  out = metrics.classification_metrics(scores, labels, ["cat", "dog", "bird", "fish"],
                                       ks=(1, 2, 3, 5))
  assert out["top1"] == pytest.approx(2 / 5)
  assert out["top2"] == pytest.approx(4 / 5)
  assert out["top3"] == pytest.approx(4 / 5)
  assert out["top5"] == 1.0  # k clipped to the 4 classes.
  assert out["per_class_accuracy"] == {"cat": 0.5, "dog": 0.0, "bird": 1.0, "fish": None}
  assert out["mean_per_class_accuracy"] == pytest.approx(0.5)
  assert out["confusion_matrix"] == [[1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
  assert out["num_examples"] == 5
  assert out["chance"] == 0.25


def test_classification_metrics_constant_scores_are_wrong():
  out = metrics.classification_metrics(np.zeros((3, 3)), np.array([0, 1, 2]), "abc", ks=(1, 2, 3))
  confusion = np.array(out.pop("confusion_matrix"))
  # Each label ties with the 2 other classes: pessimistic rank 3, never predicted.
  assert out == {"top1": 0.0, "top2": 0.0, "top3": 1.0,
                 "per_class_accuracy": {"a": 0.0, "b": 0.0, "c": 0.0},
                 "mean_per_class_accuracy": 0.0, "num_examples": 3, "chance": 1 / 3}
  assert confusion.sum(axis=1).tolist() == [1, 1, 1] and np.diag(confusion).tolist() == [0, 0, 0]


def test_classification_metrics_rejects_nan():
  with pytest.raises(ValueError, match="NaN"):
    metrics.classification_metrics(np.array([[np.nan, 0.0]]), np.array([0]), "ab")


# 8 texts x 4 videos, texts 2v and 2v + 1 describe video v.
SIMILARITY = np.array([
    # v0   v1   v2   v3
    [0.9, 0.1, 0.2, 0.3],  # t0 -> v0: rank 1.
    [0.9, 0.8, 0.7, 0.1],  # t1 -> v0: rank 1.
    [0.2, 0.8, 0.8, 0.0],  # t2 -> v1: tied with v2 -> rank 2.
    [0.1, 0.4, 0.3, 0.2],  # t3 -> v1: rank 1.
    [0.3, 0.2, 0.1, 0.5],  # t4 -> v2: rank 4.
    [0.0, 0.1, 0.6, 0.2],  # t5 -> v2: rank 1.
    [0.7, 0.0, 0.0, 0.7],  # t6 -> v3: tied with v0 -> rank 2.
    [0.2, 0.3, 0.4, 0.1],  # t7 -> v3: rank 4.
])
TEXT_TO_VIDEO = np.repeat(np.arange(4), 2)
# Video -> text, rank of the best caption among the 6 captions of other videos:
#   v0: t0 and t1 tie at 0.9 (positives do not count against each other), no negative >= 0.9: 1.
#   v1: best t2 = 0.8, negative t1 = 0.8 ties: 2.
#   v2: best t5 = 0.6, negatives t1 = 0.7 and t2 = 0.8 above: 3.
#   v3: best t6 = 0.7, no negative >= 0.7: 1.


def test_retrieval_metrics_hand_computed():
  out = metrics.retrieval_metrics(SIMILARITY, TEXT_TO_VIDEO)
  expected = {
      # t2v ranks [1, 1, 2, 1, 4, 1, 2, 4].
      "t2v_R@1": 4 / 8, "t2v_R@5": 1.0, "t2v_R@10": 1.0,
      "t2v_median_rank": 1.5, "t2v_mean_rank": 16 / 8,
      # v2t ranks [1, 2, 3, 1].
      "v2t_R@1": 2 / 4, "v2t_R@5": 1.0, "v2t_R@10": 1.0,
      "v2t_median_rank": 1.5, "v2t_mean_rank": 7 / 4,
      "chance_t2v_R@1": 1 / 4, "chance_v2t_R@1": 2 / 8,
      "num_texts": 8, "num_videos": 4,
  }
  assert out == pytest.approx(expected)


def test_retrieval_metrics_ties_are_pessimistic_and_order_free():
  out = metrics.retrieval_metrics(np.ones((8, 4)), TEXT_TO_VIDEO)
  assert out == {
      # Every text's rank: 1 + the 3 other videos.
      "t2v_R@1": 0.0, "t2v_R@5": 1.0, "t2v_R@10": 1.0, "t2v_median_rank": 4.0,
      "t2v_mean_rank": 4.0,
      # Every video's rank: 1 + the 6 captions of the other videos.
      "v2t_R@1": 0.0, "v2t_R@5": 0.0, "v2t_R@10": 1.0, "v2t_median_rank": 7.0,
      "v2t_mean_rank": 7.0,
      "chance_t2v_R@1": 1 / 4, "chance_v2t_R@1": 2 / 8, "num_texts": 8, "num_videos": 4,
  }
  # Permuting the videos (and the text labels with them) changes nothing.
  perm = np.array([2, 0, 3, 1])
  permuted = metrics.retrieval_metrics(SIMILARITY[:, perm], np.argsort(perm)[TEXT_TO_VIDEO])
  assert permuted == metrics.retrieval_metrics(SIMILARITY, TEXT_TO_VIDEO)


def test_retrieval_metrics_validates_inputs():
  with pytest.raises(ValueError, match="no text"):
    metrics.retrieval_metrics(SIMILARITY[:, :4], np.zeros(8, int))
  with pytest.raises(ValueError, match="NaN"):
    metrics.retrieval_metrics(np.where(SIMILARITY > 0.85, np.nan, SIMILARITY), TEXT_TO_VIDEO)


@pytest.mark.slow
@needs_java
def test_caption_metrics_match_pycocoevalcap():
  out = metrics.caption_metrics(PREDICTIONS, REFERENCES, num_examples=2)
  expected = _reference_scores(PREDICTIONS, REFERENCES, with_meteor=True)
  assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-12)
  assert out["meteor_status"] == "ok"
  assert (out["tokenizer"], out["tokenizer_status"]) == ("ptb", "ok")
  assert out["num_captions"] == 3
  assert out["examples"] == [{"id": k, "prediction": PREDICTIONS[k], "references": REFERENCES[k]}
                             for k in ("v0", "v1")]


def test_caption_metrics_without_java(monkeypatch):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  raw = {k: v.capitalize() + "." for k, v in PREDICTIONS.items()}  # Undone by simple_tokenize.
  out = metrics.caption_metrics(raw, REFERENCES)
  assert out["meteor"] is None
  assert out["meteor_status"] == metrics.METEOR_NO_JAVA
  assert out["tokenizer"] == "simple"
  expected = _reference_scores(PREDICTIONS, REFERENCES, with_meteor=False)
  assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-12)
  assert out["examples"][0]["prediction"] == "A man is playing a guitar."


def test_simple_tokenize():
  assert metrics.simple_tokenize("A Dog's  well-known\ntrick!") == "a dog s well known trick"


@needs_java
def test_meteor_crash_is_unavailable_not_zero(monkeypatch):
  from pycocoevalcap.meteor import meteor as meteor_lib
  monkeypatch.setattr(meteor_lib, "METEOR_JAR", "missing.jar")
  score, status = metrics._meteor({"v0": ["a man"]}, {"v0": ["a man"]}, timeout_s=60)
  assert score is None
  assert status.startswith("unavailable: METEOR failed") and "missing.jar" in status


@needs_java
def test_meteor_hang_times_out_and_kills_jvm(monkeypatch):
  from pycocoevalcap.meteor import meteor as meteor_lib
  instances = []

  def hanging_compute_score(self, gts, res):
    instances.append(self)
    self.lock.acquire()  # Like the real one, holds the lock it never releases on error.
    return float(self.meteor_p.stdout.readline())  # Nothing was sent: blocks until killed.

  monkeypatch.setattr(meteor_lib.Meteor, "compute_score", hanging_compute_score)
  score, status = metrics._meteor({"v0": ["a man"]}, {"v0": ["a man"]}, timeout_s=0.5)
  assert score is None and status.startswith("unavailable: METEOR failed (timed out")
  assert instances[0].meteor_p.returncode is not None
  instances[0].__del__()  # Must not deadlock on the lock left held by the hung call.


def test_caption_metrics_validates_ids():
  with pytest.raises(ValueError, match="only one of"):
    metrics.caption_metrics({"v0": "a"}, {"v1": ["a"]})
  with pytest.raises(ValueError, match="at least one reference"):
    metrics.caption_metrics({"v0": "a"}, {"v0": []})


def test_most_common_caption_baseline():
  train = ["a man is singing", "A  man is singing", "a dog", "a dog", "a cat", "a man is singing"]
  assert metrics.most_common_caption_baseline(train, REFERENCES) == {
      k: "a man is singing" for k in REFERENCES}
  # Ties go to the caption seen first.
  assert metrics.most_common_caption_baseline(["b", "a", "a", "b"], {0: None}) == {0: "b"}


def test_format_table():
  rows = [{"model": "coca", "cider": 0.51234, "meteor": None}, {"model": "base", "cider": 0.1}]
  assert metrics.format_table(rows, ["model", "cider", "meteor"]) == (
      "| model | cider | meteor |\n"
      "|---|---|---|\n"
      "| coca | 0.5123 | n/a |\n"
      "| base | 0.1000 | n/a |")
