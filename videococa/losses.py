"""CoCa losses: symmetric contrastive (InfoNCE), chunked captioning cross-entropy, and the
verb-phrase loss of Momeni et al. 2023."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                     negative_emb: jax.Array | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE over the global batch.

  `image_emb`, `text_emb`: `[batch, dim]` L2-normalised; pair i is (image i, text i). Under `jax.jit`
  with batch-sharded inputs the `[batch, batch]` similarity spans the whole global batch (XLA gathers
  the other side), which is what the loss needs. `negative_emb` `[batch, K, dim]` (optional):
  per-image hard-negative texts, added to image i's candidates in the image->text direction only.
  Returns (mean of the image->text and text->image cross-entropies, metrics).
  """
  image_emb = image_emb.astype(jnp.float32)
  logits = logit_scale * jnp.einsum("id,td->it", image_emb, text_emb.astype(jnp.float32))
  # The diagonal as a masked row sum (bitwise equal to jnp.diagonal): the gradient of
  # jnp.diagonal is a scatter that XLA's SPMD partitioner wraps in a `conditional` holding
  # all-gathers, and CPU executables with collectives inside a conditional deadlock when they are
  # loaded from the persistent compilation cache (jax 0.10.x), e.g. on every resumed CPU run.
  diag = jnp.where(jnp.eye(logits.shape[0], dtype=bool), logits, 0.0).sum(axis=1)
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  labels = jnp.arange(logits.shape[0])
  t2i_accuracy = (jnp.argmax(logits, 0) == labels).mean()
  metrics = {}
  if negative_emb is not None:
    negative_logits = logit_scale * jnp.einsum("id,ikd->ik", image_emb,
                                               negative_emb.astype(jnp.float32))
    metrics["hard_negative_accuracy"] = (diag[:, None] > negative_logits).all(axis=1).mean()
    logits = jnp.concatenate([logits, negative_logits], axis=1)
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  loss = 0.5 * (i2t.mean() + t2i.mean())
  accuracy = 0.5 * ((jnp.argmax(logits, 1) == labels).mean() + t2i_accuracy)
  return loss, dict(metrics, contrastive_loss=loss, contrastive_accuracy=accuracy,
                    temperature=1.0 / logit_scale)


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


def caption_loss(hidden: jax.Array, labels: jax.Array, weights: jax.Array,
                 logits_fn: Callable[[jax.Array], jax.Array], *, chunk_len: int = 16,
                 label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Teacher-forced next-token cross-entropy, averaged over the weighted (non-pad) tokens.

  `hidden` `[batch, len, width]` decoder outputs, `labels` `[batch, len]` int, `weights` `[batch,
  len]` (0 for padding), `logits_fn` maps `[batch, chunk, width]` to `[batch, chunk, vocab]`. The
  vocabulary logits are produced `chunk_len` positions at a time inside a rematerialised `lax.scan`,
  so neither the forward nor the backward pass ever holds fp32 logits for the whole sequence: at
  64k vocabulary those dominate memory. The batch axis stays whole, so batch sharding is preserved.
  """
  batch, length, width = hidden.shape
  chunk_len = max(1, min(chunk_len, length))
  pad = -length % chunk_len
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    labels = jnp.pad(labels, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  num_chunks = (length + pad) // chunk_len

  def to_chunks(x):  # [batch, num_chunks * chunk_len, ...] -> [num_chunks, batch, chunk_len, ...]
    return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_len, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk_sums(h, y, w):
    logits = logits_fn(h).astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    nll = log_z - (1.0 - label_smoothing) * target - label_smoothing * logits.sum(-1) / vocab
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    return jnp.stack([(nll * w).sum(), (correct * w).sum()])

  def body(total, xs):
    return total + chunk_sums(*xs), None

  weights = weights.astype(jnp.float32)
  (nll_sum, correct_sum), _ = jax.lax.scan(
      body, jnp.zeros(2, jnp.float32), (to_chunks(hidden), to_chunks(labels), to_chunks(weights)))
  num_tokens = jnp.maximum(weights.sum(), 1.0)
  loss = nll_sum / num_tokens
  return loss, dict(caption_loss=loss, caption_accuracy=correct_sum / num_tokens,
                    caption_tokens=weights.sum())


def coca_loss(outputs: dict[str, jax.Array], labels: jax.Array, weights: jax.Array,
              logits_fn: Callable[[jax.Array], jax.Array], *, contrastive_weight: float = 1.0,
              caption_weight: float = 2.0, verb_phrase_weight: float = 1.0,
              chunk_len: int = 16, label_smoothing: float = 0.0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`contrastive_weight * contrastive + caption_weight * captioning` (CoCa: 1.0 and 2.0), plus
  `verb_phrase_weight * verb_phrase_loss` when `outputs` has `phrase_emb`.

  `outputs`: the model's (image_emb, text_emb, logit_scale, hidden), plus `negative_emb` `[batch,
  K, dim]` when training with hard-negative texts and `phrase_emb` `[batch, K', dim]` with verb
  phrases."""
  loss, metrics = contrastive_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"],
                                   outputs.get("negative_emb"))
  loss = contrastive_weight * loss
  if caption_weight and "hidden" in outputs:
    cap, cap_metrics = caption_loss(outputs["hidden"], labels, weights, logits_fn,
                                    chunk_len=chunk_len, label_smoothing=label_smoothing)
    loss = loss + caption_weight * cap
    metrics.update(cap_metrics)
  if "phrase_emb" in outputs:
    phrase, phrase_metrics = verb_phrase_loss(outputs["image_emb"], outputs["phrase_emb"],
                                              outputs["logit_scale"])
    loss = loss + verb_phrase_weight * phrase
    metrics.update(phrase_metrics)
  metrics["loss"] = loss
  return loss, metrics
