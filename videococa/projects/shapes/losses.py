"""The shapes project's extra loss term: the verb-phrase loss of Momeni et al. 2023.

Registered as `config.loss.terms.verb_phrase` (`videococa.train.losses.register_term`). It reads
the text set `phrases` (`config.input.extra_texts.phrases = K`, made by the `motion_phrases` pp op):
our deviation from VideoCoCa, which trains with the CoCa losses only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from videococa.train import losses


def verb_phrase_loss(image_emb: jax.Array, phrase_emb: jax.Array, logit_scale: jax.Array
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Each clip picks its caption's verb phrase among K (Momeni et al. 2023, "Verbs in Action").

  `image_emb` `[batch, dim]` and `phrase_emb` `[batch, K, dim]` L2-normalised; phrase 0 of clip i
  is its caption's verb phrase ("slides left"), phrases 1..K-1 the same phrase for other verbs
  ("slides right", ...). Returns (mean K-way cross-entropy of the logits `logit_scale * cos`
  with target 0, metrics).
  """
  logits = logit_scale * jnp.einsum("id,ikd->ik", image_emb.astype(jnp.float32),
                                    phrase_emb.astype(jnp.float32))
  loss = (jax.nn.logsumexp(logits, axis=1) - logits[:, 0]).mean()
  accuracy = (jnp.argmax(logits, axis=1) == 0).mean()
  return loss, dict(verb_phrase_loss=loss, verb_phrase_accuracy=accuracy)


@losses.register_term("verb_phrase")
def verb_phrase_term(outputs: dict[str, jax.Array], texts: str = "phrases"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`verb_phrase_loss` of the clip embeddings against the text set `texts` of the batch."""
  return verb_phrase_loss(outputs["image_emb"], outputs[f"{texts}_emb"], outputs["logit_scale"])
