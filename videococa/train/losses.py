"""CoCa losses: symmetric contrastive (InfoNCE), chunked captioning cross-entropy, and the
registry of extra loss terms that projects add (`register_term`)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from videococa.errors import UserError

LossTerm = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
_TERMS: dict[str, LossTerm] = {}


def register_term(name: str):
  """Decorator registering an extra loss term under `name`.

  A term is `fn(outputs, **kwargs) -> (loss [], metrics)`, where `outputs` is the model's output
  dict (`image_emb`, `text_emb`, `logit_scale`, `hidden`) plus `<key>_emb` `[batch, K, dim]` for
  every extra text set `key` of the batch (`config.input.extra_texts`). `config.loss.terms =
  {name: dict(weight=w, **kwargs)}` adds `w * loss` to the CoCa loss.
  """
  def decorator(fn: LossTerm) -> LossTerm:
    if name in _TERMS:
      raise ValueError(f"Loss term {name!r} is registered twice.")
    _TERMS[name] = fn
    return fn
  return decorator


def get_term(name: str) -> LossTerm:
  if name not in _TERMS:
    raise UserError(f"config.loss.terms.{name}: no loss term {name!r} is registered (known: "
                    f"{sorted(_TERMS)}); list the module that registers it in config.extensions.")
  return _TERMS[name]


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
              caption_weight: float = 2.0, chunk_len: int = 16, label_smoothing: float = 0.0,
              terms: Mapping[str, Mapping[str, Any]] | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`contrastive_weight * contrastive + caption_weight * captioning` (CoCa: 1.0 and 2.0), plus
  `weight * term` for every registered extra term in `terms` (`{name: dict(weight=, **kwargs)}`).

  `outputs`: the model's (image_emb, text_emb, logit_scale, hidden), plus `negatives_emb` `[batch,
  K, dim]` when training with hard-negative texts and the other `<key>_emb` the terms read."""
  loss, metrics = contrastive_loss(outputs["image_emb"], outputs["text_emb"], outputs["logit_scale"],
                                   outputs.get("negatives_emb"))
  loss = contrastive_weight * loss
  if caption_weight and "hidden" in outputs:
    cap, cap_metrics = caption_loss(outputs["hidden"], labels, weights, logits_fn,
                                    chunk_len=chunk_len, label_smoothing=label_smoothing)
    loss = loss + caption_weight * cap
    metrics.update(cap_metrics)
  for name, term_config in (terms or {}).items():
    kwargs = dict(term_config)
    weight = kwargs.pop("weight", 1.0)
    term_loss, term_metrics = get_term(name)(outputs, **kwargs)
    loss = loss + weight * term_loss
    metrics.update(term_metrics)
  metrics["loss"] = loss
  return loss, metrics
