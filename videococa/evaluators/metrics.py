"""Metrics of the zero-shot evaluators: classification, retrieval and captioning.

Pure numpy (plus `pycocoevalcap`, imported lazily by `caption_metrics`), so the functions can be
unit-tested and reused outside of JAX. All inputs are host arrays / python containers.

Conventions shared by all functions:

  * Accuracies and recalls are fractions in [0, 1], not percentages.
  * Ranks are 1-based.
  * Ties are counted pessimistically: the rank of a ground truth is 1 + the number of wrong
    candidates that score *greater than or equal* to it. A model that outputs constant scores thus
    gets the worst rank rather than rank 1, and results do not depend on candidate order.
  * Non-finite scores are rejected (a NaN compares False with everything and would silently give
    rank 1).
  * Caption scores are the raw pycocoevalcap values (BLEU/METEOR/ROUGE-L in [0, 1], CIDEr
    unscaled, typically in [0, 10]); CIDEr's idf is computed from the references of the evaluated
    set, so scores on different subsets are not comparable.
"""
import collections
import re
import shutil
import threading
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

METEOR_NO_JAVA = ("unavailable: no Java runtime (install a JRE, e.g. apt-get install "
                  "default-jre-headless)")


def _check_scores(scores: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray,
                                                                                np.ndarray]:
  """Validates a [n, num_candidates] score matrix and its [n] ground-truth indices."""
  scores = np.asarray(scores, dtype=np.float64)
  labels = np.asarray(labels)
  if scores.ndim != 2 or labels.shape != scores.shape[:1]:
    raise ValueError(f"{name}: expected scores [n, c] and labels [n], got {scores.shape} and "
                     f"{labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}: labels must be integers, got {labels.dtype}.")
  if not labels.size or not scores.shape[1]:
    raise ValueError(f"{name}: empty scores {scores.shape}.")
  if labels.min() < 0 or labels.max() >= scores.shape[1]:
    raise ValueError(f"{name}: labels must lie in [0, {scores.shape[1]}).")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"{name}: scores contain NaN or inf.")
  return scores, labels


def _pessimistic_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """1-based rank of scores[i, labels[i]] in row i of [n, c] scores, ties counted against it."""
  target = scores[np.arange(len(labels)), labels]
  return np.sum(scores >= target[:, None], axis=1)  # Includes the target itself, hence 1-based.


def _pessimistic_argmax(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[n] argmax of [n, c] scores; a tie for the maximum never resolves to the true label."""
  is_max = scores == scores.max(axis=1, keepdims=True)
  tied = is_max.sum(axis=1) > 1
  is_max[np.arange(len(labels)), labels] &= ~tied
  return np.argmax(is_max, axis=1)


def classification_metrics(logits_or_scores: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict:
  """Top-k, per-class accuracy and confusion matrix of a classifier.

  Args:
    logits_or_scores: [n, num_classes] scores, higher is more likely.
    labels: [n] integer true classes.
    class_names: [num_classes] names, keys of `per_class_accuracy`.
    ks: the k of the reported top-k accuracies (k > num_classes behaves as k = num_classes).

  Returns:
    `top{k}` for k in ks, `per_class_accuracy` ({name: accuracy, or None for a class without
    examples}), `mean_per_class_accuracy` (over classes with examples), `confusion_matrix`
    ([num_classes][num_classes] ints, rows = true class, columns = predicted class),
    `num_examples` and `chance` (1 / num_classes). Ties are pessimistic (see module docstring),
    also in the confusion matrix, so that top1 == trace / num_examples.
  """
  scores, labels = _check_scores(logits_or_scores, labels, "classification_metrics")
  num_classes = scores.shape[1]
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
  ranks = _pessimistic_rank(scores, labels)
  result = {f"top{k}": float(np.mean(ranks <= k)) for k in ks}

  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, _pessimistic_argmax(scores, labels)), 1)
  support = confusion.sum(axis=1)
  accuracies = [float(confusion[c, c] / support[c]) if support[c] else None
                for c in range(num_classes)]
  present = [a for a in accuracies if a is not None]
  result.update(
      per_class_accuracy=dict(zip(class_names, accuracies)),
      mean_per_class_accuracy=float(np.mean(present)) if present else None,
      confusion_matrix=confusion.tolist(),
      num_examples=int(len(labels)),
      chance=1.0 / num_classes,
  )
  return result


def _rank_summary(ranks: np.ndarray, prefix: str) -> dict:
  """R@1/5/10, median and mean rank of [n] 1-based ranks."""
  summary = {f"{prefix}_R@{k}": float(np.mean(ranks <= k)) for k in (1, 5, 10)}
  summary[f"{prefix}_median_rank"] = float(np.median(ranks))
  summary[f"{prefix}_mean_rank"] = float(np.mean(ranks))
  return summary


def retrieval_metrics(similarity: np.ndarray, text_to_video: np.ndarray) -> dict:
  """Text->video and video->text retrieval with several captions per video.

  The standard multi-caption protocol (CLIP4Clip, open_clip / clip_benchmark):
    * text->video: each text is a query; its rank is that of its one video among all videos.
    * video->text: each video is a query; its rank is that of its best-ranked caption among all
      texts (other captions of the same video never count against it).
  Ranks are 1-based with pessimistic ties: 1 + the number of *wrong* candidates scoring >= the
  (best) ground truth. Recalls are fractions in [0, 1].

  Args:
    similarity: [num_texts, num_videos] scores, higher is more similar.
    text_to_video: [num_texts] index of the video each text describes. Every video needs at
      least one text.

  Returns:
    `t2v_R@1`, `t2v_R@5`, `t2v_R@10`, `t2v_median_rank`, `t2v_mean_rank`, the same for `v2t_`,
    `chance_t2v_R@1` (1 / num_videos), `chance_v2t_R@1` (R@1 of a random ranking: mean over
    videos of captions_of_video / num_texts, which also equals 1 / num_videos), `num_texts` and
    `num_videos`.
  """
  sim, text_to_video = _check_scores(similarity, text_to_video, "retrieval_metrics")
  num_texts, num_videos = sim.shape
  captions_per_video = np.bincount(text_to_video, minlength=num_videos)
  if np.any(captions_per_video == 0):
    raise ValueError(f"Videos {np.flatnonzero(captions_per_video == 0)[:10]} have no text.")

  is_positive = np.zeros_like(sim, dtype=bool)
  is_positive[np.arange(num_texts), text_to_video] = True
  best_positive = np.where(is_positive, sim, -np.inf).max(axis=0)  # [num_videos]
  v2t_ranks = 1 + np.sum((sim >= best_positive[None]) & ~is_positive, axis=0)

  return {
      **_rank_summary(_pessimistic_rank(sim, text_to_video), "t2v"),
      **_rank_summary(v2t_ranks, "v2t"),
      "chance_t2v_R@1": 1.0 / num_videos,
      "chance_v2t_R@1": float(np.mean(captions_per_video / num_texts)),
      "num_texts": int(num_texts),
      "num_videos": int(num_videos),
  }


def _one_line(text: str) -> str:
  """Collapses all whitespace, line breaks included (the PTB/METEOR protocols are line based)."""
  return " ".join(text.split())


def simple_tokenize(text: str) -> str:
  """Java-free stand-in for the PTB tokenizer: lowercase, punctuation -> space, split.

  Every character that is neither a word character nor whitespace becomes a space. Close to, not
  identical with, PTB (which keeps "'s", "n't" and hyphenated words as tokens), hence scores
  computed with it are labelled `tokenizer: 'simple'`.
  """
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _ptb_tokenize(captions: Mapping[Hashable, list[str]]) -> dict:
  """pycocoevalcap's PTB tokenizer (one JVM) on {id: [caption]}, checked for lost lines."""
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  tokenized = PTBTokenizer().tokenize(
      {k: [{"caption": _one_line(c)} for c in v] for k, v in captions.items()})
  if any(len(tokenized.get(k, ())) != len(v) for k, v in captions.items()):
    raise RuntimeError("PTB tokenizer output has fewer lines than its input")
  return tokenized


def _tokenize(predictions, references, java: bool) -> tuple[dict, dict, dict]:
  """Tokenizes {id: str} predictions and {id: [str]} references; third output is the status."""
  keys = list(references)
  if java:
    # One tokenizer call (one JVM) for predictions and references together.
    joined = {(k, i): caps for k in keys
              for i, caps in enumerate(([predictions[k]], references[k]))}
    try:
      tokenized = _ptb_tokenize(joined)
      return ({k: tokenized[(k, 0)] for k in keys}, {k: tokenized[(k, 1)] for k in keys},
              {"tokenizer": "ptb", "tokenizer_status": "ok"})
    except (OSError, RuntimeError, UnicodeError) as e:
      status = f"PTB tokenizer failed ({type(e).__name__}: {e}); used simple_tokenize"
  else:
    status = "no Java runtime; used simple_tokenize"
  return ({k: [simple_tokenize(predictions[k])] for k in keys},
          {k: [simple_tokenize(r) for r in references[k]] for k in keys},
          {"tokenizer": "simple", "tokenizer_status": status})


def _close_meteor(meteor, worker: threading.Thread) -> str:
  """Kills the METEOR JVM, waits for the worker thread; returns the JVM's last stderr line."""
  process = meteor.meteor_p
  process.kill()
  process.wait()
  worker.join(timeout=10)  # Unblocked: its pipe reads now hit end-of-file.
  stderr = process.stderr.read().decode(errors="replace").strip().splitlines()
  for stream in (process.stdin, process.stdout, process.stderr):
    try:
      stream.close()
    except OSError:  # stdin may report the broken pipe of a dead JVM when flushed.
      pass
  # A failed compute_score leaves the scorer's lock held and Meteor.__del__ acquires it.
  meteor.lock = threading.Lock()
  return stderr[-1] if stderr else ""


def _meteor(gts: dict, res: dict, timeout_s: float) -> tuple[float | None, str]:
  """pycocoevalcap METEOR with a time limit; (score, 'ok') or (None, 'unavailable: reason')."""
  from pycocoevalcap.meteor.meteor import Meteor
  # `|||` separates fields of the METEOR protocol; pycocoevalcap strips it from hypotheses only.
  gts = {k: [r.replace("|||", " ") for r in v] for k, v in gts.items()}
  try:
    meteor = Meteor()
  except OSError as e:
    return None, f"unavailable: could not start METEOR ({e})"
  outcome = {}

  def work():
    try:
      outcome["score"] = float(meteor.compute_score(gts, res)[0])
    except Exception as e:  # Dead JVM, broken pipe, unparsable output: all "unavailable".
      outcome["error"] = f"{type(e).__name__}: {e}"

  worker = threading.Thread(target=work, daemon=True)
  worker.start()
  worker.join(timeout_s)
  timed_out = worker.is_alive()
  stderr = _close_meteor(meteor, worker)
  if "score" in outcome:
    return outcome["score"], "ok"
  reason = f"timed out after {timeout_s:g} s" if timed_out else outcome.get("error", "no output")
  return None, f"unavailable: METEOR failed ({reason})" + (f"; JVM: {stderr}" if stderr else "")


def caption_metrics(predictions: Mapping[Hashable, str],
                    references: Mapping[Hashable, Sequence[str]], *, num_examples: int = 5,
                    meteor_timeout_s: float = 300.0) -> dict:
  """COCO caption metrics (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L, CIDEr.

  With Java (`shutil.which('java')`), captions are tokenized with pycocoevalcap's PTB tokenizer,
  exactly as the COCO caption evaluation does. Without it, tokenization falls back to
  `simple_tokenize` and METEOR (a Java program) is reported as None with the reason in
  `meteor_status`; it is never reported as 0. A METEOR crash or time-out is reported the same way.

  Args:
    predictions: {id: predicted caption}.
    references: {id: [reference captions]}, same ids, at least one reference each.
    num_examples: how many (first in `predictions` order) examples to return untokenized.
    meteor_timeout_s: time limit of the METEOR JVM (it starts in a few seconds).

  Returns:
    `bleu1`..`bleu4`, `meteor` (float or None), `meteor_status` ('ok' or 'unavailable: ...'),
    `rouge_l`, `cider`, `tokenizer` ('ptb' or 'simple'), `tokenizer_status`, `num_captions`
    (number of ids) and `examples` ([{'id', 'prediction', 'references'}]).
  """
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  if set(predictions) != set(references):
    raise ValueError(f"{len(set(predictions) ^ set(references))} ids are in only one of "
                     "predictions and references.")
  if not references or any(len(v) == 0 for v in references.values()):
    raise ValueError("Need at least one id, and at least one reference for every id.")

  java = shutil.which("java") is not None
  res, gts, result = _tokenize(predictions, references, java)
  bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
  result.update({f"bleu{n}": float(b) for n, b in enumerate(bleu, start=1)})
  result["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
  result["cider"] = float(Cider().compute_score(gts, res)[0])
  if java:
    result["meteor"], result["meteor_status"] = _meteor(gts, res, meteor_timeout_s)
  else:
    result["meteor"], result["meteor_status"] = None, METEOR_NO_JAVA
  result["num_captions"] = len(references)
  result["examples"] = [
      {"id": k, "prediction": predictions[k], "references": list(references[k])}
      for k in list(predictions)[:num_examples]]
  return result


def most_common_caption_baseline(train_captions: Sequence[str],
                                 references: Mapping[Hashable, Any]) -> dict:
  """Predicts the most frequent training caption for every id of `references`.

  Captions are counted after lowercasing and collapsing whitespace; ties go to the caption seen
  first. Scored with `caption_metrics`, this is the "is the model better than a constant?" floor.

  Args:
    train_captions: all training captions.
    references: {id: ...}, only the ids are used.

  Returns:
    {id: the most common training caption}.
  """
  if not train_captions:
    raise ValueError("No training captions.")
  counts = collections.Counter(_one_line(c).lower() for c in train_captions)
  caption = counts.most_common(1)[0][0]
  return {k: caption for k in references}


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """Markdown table of `rows` restricted to `columns`; floats with 4 decimals, None as 'n/a'."""

  def cell(value):
    if value is None:
      return "n/a"
    return f"{value:.4f}" if isinstance(value, (float, np.floating)) else str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
  return "\n".join(lines)
