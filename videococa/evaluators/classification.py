"""Zero-shot classification: each class is the text embedding of its name in several prompts.

Class c's classifier is the mean over templates t of the (unit) text embeddings of
`templates[t].format(class_names[c])`, renormalised to unit length (CLIP's prompt ensembling). A
clip's scores are the dot products of its image embedding with the C classifiers.

Config fields (besides `common.COMMON_FIELDS`):
  class_names: [C] names, in label order (label i is class_names[i]), or the path of a text file
    with one name per line (e.g. the `class_names.txt` that `videococa.data.ingest` writes).
  templates: prompt templates, each with one '{}' (e.g. 'a video of {}.'); `prompts.py` has
    CLIP's ImageNet and Kinetics sets.
  label_key: the pp key holding the int label ('label').
  text_batch_size: prompts per text batch (0: batch_size).

Result: `videococa.evaluators.metrics.classification_metrics` (top1, top5, per_class_accuracy,
mean_per_class_accuracy, confusion_matrix, num_examples, chance = 1 / C) plus class_names and
num_templates.
"""
from __future__ import annotations

import numpy as np

from videococa import errors
from videococa.evaluators import common, metrics
from videococa.models import coca


def read_class_names(class_names, where: str) -> list[str]:
  """A list of names, or the path of a file with one name per line (blank lines ignored)."""
  if not isinstance(class_names, str):
    return [str(c) for c in class_names]
  try:
    with open(class_names, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise errors.MissingPathError(f"{where}={class_names!r}: cannot read it ({e.strerror}); give "
                                  "a file with one class name per line, in label order.") from None


class Classification(common.Evaluator):
  """Zero-shot classification by class-name prompts."""
  FIELDS = dict(class_names=common.REQUIRED, templates=common.REQUIRED, label_key="label",
                text_batch_size=0)

  def __init__(self, name, eval_config, **kwargs):
    super().__init__(name, eval_config, **kwargs)
    self.class_names = read_class_names(self.cfg["class_names"], f"{self.where}.class_names")
    self.templates = [str(t) for t in self.cfg["templates"]]
    if not self.class_names or len(set(self.class_names)) != len(self.class_names):
      raise ValueError(f"{self.where}.class_names={self.class_names}: give distinct names, one per "
                       "label, in label order.")
    bad = [t for t in self.templates if t.count("{}") != 1]
    if not self.templates or bad:
      raise ValueError(f"{self.where}.templates: every template needs exactly one '{{}}' for the "
                       f"class name (e.g. 'a video of {{}}.'); got {bad or self.templates}.")
    self.prompts = [t.format(c) for c in self.class_names for t in self.templates]  # Class-major.
    self.encoder = self.make_encoder(self.cfg["text_batch_size"])

  def classifier(self, params) -> np.ndarray:
    """float32 `[C, embed_dim]`: per class, the renormalised mean of its prompts' embeddings."""
    prompts = self.encoder.text_embeddings(params, self.prompts)
    per_template = prompts.reshape(len(self.class_names), len(self.templates), -1)
    return np.asarray(coca.l2_normalize(per_template.mean(axis=1)))

  def run(self, params) -> dict:
    classifier = self.classifier(params)
    image_emb, info = self.encoder.image_embeddings(params, self.batches())
    labels = np.asarray(self.require(info, self.cfg["label_key"]))
    if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
      raise ValueError(f"{self.where}: the data has labels in [{labels.min()}, {labels.max()}] but "
                       f"class_names has {len(self.class_names)} names; give one per label.")
    result = metrics.classification_metrics(image_emb @ classifier.T, labels, self.class_names)
    result.update(class_names=self.class_names, num_templates=len(self.templates))
    return result
