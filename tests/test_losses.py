"""Losses against numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videococa.errors import UserError
from videococa.projects.shapes import losses as shapes_losses
from videococa.train import losses


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _logsumexp(x, axis):
  top = x.max(axis=axis, keepdims=True)
  return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _normalise(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _contrastive_reference(img, txt, scale):
  logits = scale * img @ txt.T
  return -0.5 * (np.diag(_log_softmax(logits, 1)).mean() + np.diag(_log_softmax(logits, 0)).mean())


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(0)
  img, txt = _normalise(rng.normal(size=(6, 5))), _normalise(rng.normal(size=(6, 5)))
  scale = 1 / 0.07
  logits = scale * img @ txt.T
  expected = -0.5 * (np.diag(_log_softmax(logits, 1)).mean() + np.diag(_log_softmax(logits, 0)).mean())
  loss, metrics = losses.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["temperature"], 0.07, rtol=1e-6)


def test_contrastive_loss_with_hard_negatives_matches_numpy():
  rng = np.random.default_rng(1)
  img, txt = _normalise(rng.normal(size=(6, 5))), _normalise(rng.normal(size=(6, 5)))
  neg = _normalise(rng.normal(size=(6, 3, 5)))
  scale = 1 / 0.07
  logits = scale * img @ txt.T
  i2t_logits = np.concatenate([logits, scale * np.einsum("id,ikd->ik", img, neg)], axis=1)
  expected = -0.5 * (np.diag(_log_softmax(i2t_logits, 1)[:, :6]).mean()
                     + np.diag(_log_softmax(logits, 0)).mean())
  loss, metrics = losses.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale),
                                          jnp.asarray(neg))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  beats_negatives = (np.diag(logits)[:, None] > i2t_logits[:, 6:]).all(axis=1).mean()
  np.testing.assert_allclose(metrics["hard_negative_accuracy"], beats_negatives)
  plain, _ = losses.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(scale))
  np.testing.assert_allclose(plain, _contrastive_reference(img, txt, scale), rtol=1e-5)
  # The negatives only enlarge the image->text normalisers: the loss grows by half the mean of
  # their log-ratios (0.742 here; float32 losses of ~10: measured error 1.1e-6).
  extra = 0.5 * np.mean(_logsumexp(i2t_logits, 1) - _logsumexp(logits, 1))
  np.testing.assert_allclose(loss - plain, extra, rtol=0, atol=1e-5)


def test_verb_phrase_loss_matches_numpy():
  rng = np.random.default_rng(2)
  img, phrases = _normalise(rng.normal(size=(5, 4))), _normalise(rng.normal(size=(5, 7, 4)))
  scale = 1 / 0.05
  logits = scale * np.einsum("id,ikd->ik", img, phrases)
  loss, metrics = shapes_losses.verb_phrase_loss(jnp.asarray(img), jnp.asarray(phrases),
                                                 jnp.asarray(scale))
  np.testing.assert_allclose(loss, -_log_softmax(logits, 1)[:, 0].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["verb_phrase_accuracy"], (logits.argmax(1) == 0).mean())
  # As the registered term `verb_phrase`, coca_loss adds it with its weight.
  txt = _normalise(rng.normal(size=(5, 4)))
  outputs = dict(image_emb=jnp.asarray(img), text_emb=jnp.asarray(txt),
                 logit_scale=jnp.asarray(scale))
  base, _ = losses.coca_loss(outputs, None, None, None)
  total, _ = losses.coca_loss(dict(outputs, phrases_emb=jnp.asarray(phrases)), None, None, None,
                              terms=dict(verb_phrase=dict(weight=0.5, texts="phrases")))
  np.testing.assert_allclose(total, base + 0.5 * loss, rtol=1e-5)
  with pytest.raises(UserError, match="no loss term 'verb_phrses' is registered"):
    losses.coca_loss(outputs, None, None, None, terms=dict(verb_phrses={}))


def _caption_reference(logits, labels, weights, smoothing):
  logp = _log_softmax(logits, -1)
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  smooth = -logp.mean(-1)
  per_token = (1 - smoothing) * nll + smoothing * smooth
  return (per_token * weights).sum() / weights.sum()


@pytest.mark.parametrize("chunk_len,smoothing", [(16, 0.0), (3, 0.0), (4, 0.1), (1, 0.2)])
def test_caption_loss_matches_numpy_for_any_chunking(chunk_len, smoothing):
  rng = np.random.default_rng(1)
  batch, length, width, vocab = 3, 10, 4, 11
  hidden = rng.normal(size=(batch, length, width)).astype(np.float32)
  kernel = rng.normal(size=(width, vocab)).astype(np.float32)
  labels = rng.integers(0, vocab, (batch, length))
  weights = (rng.uniform(size=(batch, length)) > 0.3).astype(np.float32)
  logits_fn = lambda h: h @ jnp.asarray(kernel)  # noqa: E731
  loss, metrics = losses.caption_loss(jnp.asarray(hidden), jnp.asarray(labels), jnp.asarray(weights),
                                      logits_fn, chunk_len=chunk_len, label_smoothing=smoothing)
  expected = _caption_reference(hidden @ kernel, labels, weights, smoothing)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  accuracy = (((hidden @ kernel).argmax(-1) == labels) * weights).sum() / weights.sum()
  np.testing.assert_allclose(metrics["caption_accuracy"], accuracy, rtol=1e-6)


def test_chunked_caption_loss_gradient_equals_unchunked():
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.normal(size=(2, 9, 4)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, (2, 9)))
  weights = jnp.asarray(rng.uniform(size=(2, 9)) > 0.2, jnp.float32)

  def loss(k, chunk):
    return losses.caption_loss(hidden, labels, weights, lambda h: h @ k, chunk_len=chunk)[0]

  np.testing.assert_allclose(jax.grad(loss)(kernel, 2), jax.grad(loss)(kernel, 9), rtol=1e-5,
                             atol=1e-6)


def test_coca_loss_weights_the_parts():
  rng = np.random.default_rng(3)
  outputs = dict(image_emb=jnp.asarray(_normalise(rng.normal(size=(4, 3)))),
                 text_emb=jnp.asarray(_normalise(rng.normal(size=(4, 3)))),
                 logit_scale=jnp.asarray(10.0),
                 hidden=jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32))
  labels = jnp.asarray(rng.integers(0, 6, (4, 5)))
  weights = jnp.ones((4, 5))
  kernel = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  total, metrics = losses.coca_loss(outputs, labels, weights, lambda h: h @ kernel,
                                    contrastive_weight=1.0, caption_weight=2.0)
  contrastive = _contrastive_reference(np.asarray(outputs["image_emb"]),
                                       np.asarray(outputs["text_emb"]), 10.0)
  caption = _caption_reference(np.asarray(outputs["hidden"]) @ np.asarray(kernel),
                               np.asarray(labels), np.asarray(weights), 0.0)
  np.testing.assert_allclose(metrics["contrastive_loss"], contrastive, rtol=1e-5)
  np.testing.assert_allclose(metrics["caption_loss"], caption, rtol=1e-5)
  np.testing.assert_allclose(total, contrastive + 2 * caption, rtol=1e-5)
