"""The shapes project's pp ops: caption rewrites that need the clip's motion label.

  motion_negatives  the caption rewritten for each other motion (verb-swapped hard negatives,
                    read by the contrastive loss as `negatives`);
  motion_phrases    the caption's motion phrase alone, then the same phrase for each other motion
                    (targets of the verb-phrase loss, `videococa.projects.shapes.losses`).

Registered in the core's pp-op registry (`videococa.data.preprocess.register`) on import.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from videococa.data.preprocess import Op, register
from videococa.projects.shapes import scenes


def _motion_text_op(rewrite, size: int, key: str, label: str, out: str) -> Op:
  """Op: `out` string `[size]` = `rewrite(caption, motion name)` of the caption `key` (string `[]`)
  of a clip whose motion index is `label`."""

  def apply(caption, motion):
    texts = rewrite(caption.decode("utf-8"), scenes.MOTIONS[int(motion)])
    return np.array([t.encode("utf-8") for t in texts], dtype=object)

  def fn(example):
    texts = tf.numpy_function(apply, [example[key], example[label]], tf.string, stateful=False)
    texts.set_shape([size])
    example[out] = texts
    return example
  return fn


@register("motion_negatives")
def get_motion_negatives(key: str = "caption", label: str = "label",
                         out: str = "negative_captions") -> Op:
  """The caption `key` (string `[]`) of a clip whose motion index is `label`,
  rewritten for each of the other motions -> `out` string `[len(MOTIONS) - 1]` (verb-swapped hard
  negatives, `scenes.motion_negatives`)."""
  return _motion_text_op(scenes.motion_negatives, len(scenes.MOTIONS) - 1, key, label, out)


@register("motion_phrases")
def get_motion_phrases(key: str = "caption", label: str = "label",
                       out: str = "phrase_captions") -> Op:
  """The motion phrase of the caption `key` alone, then the same phrase for each
  other motion -> `out` string `[len(MOTIONS)]` (verb-phrase targets, `scenes.motion_phrases`;
  the first is the positive)."""
  return _motion_text_op(scenes.motion_phrases, len(scenes.MOTIONS), key, label, out)
