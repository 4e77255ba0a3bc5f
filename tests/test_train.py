"""Training loop: overfitting a fixed batch, checkpoint round trip, resume, no TensorFlow needed."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from videococa import config_utils
from videococa.data import inputs
from videococa.train import checkpoint, loop as train, metric_writer, sharding
from videococa.train import trainer as trainer_lib


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**overrides):
  config = config_utils.load_config("configs/coca.py:tiny")
  config.mesh = dict(data=1)
  config.update(overrides)
  return config


def test_one_batch_is_overfit():
  """30 steps on one random batch cut the loss by more than half."""
  config = _tiny(total_steps=30)
  config.optimizer.update(lr=3e-3, warmup_steps=0, decay="constant")
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state()
  batch = inputs.random_batch(np.random.default_rng(0), config.input.batch_size, 1,
                              config.model.vision.image_size, config.model.max_len + 1,
                              config.model.vocab_size)
  losses = []
  for _ in range(30):
    state, metrics = trainer.step(state, sharding.put_batch(batch, trainer.mesh))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(tmp_path):
  config = _tiny(total_steps=20, checkpoint_every=10)
  first = train.train(config, str(tmp_path))
  assert (first["start_step"], first["end_step"], first["resumed"]) == (0, 20, False)
  config.total_steps = 40
  second = train.train(config, str(tmp_path))
  assert (second["start_step"], second["end_step"], second["resumed"]) == (20, 40, True)
  with checkpoint.Checkpointer(str(tmp_path / "checkpoints"), save_interval_steps=10,
                               max_to_keep=3) as ckpt:
    assert ckpt.all_steps() == [20, 30, 40]
  steps = [r["step"] for r in metric_writer.read_jsonl(str(tmp_path / "metrics.jsonl"), "train")]
  assert steps == [10, 20, 30, 40]
  third = train.train(config, str(tmp_path))  # Already done: nothing to do.
  assert third["start_step"] == third["end_step"] == 40


@pytest.mark.slow
def test_checkpoint_restores_the_trainer_state_exactly(tmp_path):
  config = _tiny()
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
  state = trainer.init_state()
  with checkpoint.Checkpointer(str(tmp_path), save_interval_steps=1, max_to_keep=1) as ckpt:
    ckpt.save(0, state, dict(step=0), force=True)
    restored, meta = ckpt.restore(None, trainer.abstract_state())
  assert meta == dict(step=0)
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(restored))):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_training_on_random_input_needs_no_tensorflow(tmp_path):
  """The model, train step, checkpoints and metrics run where TensorFlow is not installed."""
  code = "\n".join([
      "import sys",
      "sys.modules['tensorflow'] = None  # Any import of TensorFlow now raises ImportError.",
      "sys.modules['tensorflow_datasets'] = None",
      "from videococa import config_utils",
      "from videococa.train import loop as train",
      "config = config_utils.load_config('configs/coca.py:tiny')",
      "config.update(total_steps=4, checkpoint_every=2, log_every=2, mesh=dict(data=1))",
      "config.optimizer.warmup_steps = 1",
      f"summary = train.train(config, {str(tmp_path)!r})",
      "assert summary['end_step'] == 4, summary",
  ])
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=600)
  assert (tmp_path / "checkpoints" / "4").is_dir()
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_hard_negatives_enter_the_contrastive_loss():
  """Each clip's `negatives` [batch, K, L+1] are encoded like captions and added to its image->text
  candidates: with K copies of its own caption the loss equals the closed form on the same
  embeddings (so the reshape, token slicing and pairing are right)."""
  from videococa.train import losses  # pylint: disable=g-import-not-at-top
  config = _tiny()
  config.input.extra_texts = dict(negatives=3)
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh))
  params = trainer.init_state().params
  rng = np.random.default_rng(0)
  batch_size, k, size = 4, 3, config.model.vision.image_size
  text = rng.integers(4, config.model.vocab_size, (batch_size, config.model.max_len + 1))
  text[:, 0], text[:, -3:] = 2, 0  # BOS ... PAD.
  batch = dict(frames=rng.uniform(-1, 1, (batch_size, 1, size, size, 3)).astype(np.float32),
               text=text.astype(np.int32))
  _, plain = trainer_lib.Trainer(_tiny(), trainer.mesh).loss_fn(params, batch)
  with_negatives = dict(batch, negatives=np.repeat(batch["text"][:, None], k, axis=1))
  _, metrics = trainer.loss_fn(params, with_negatives)
  frames, tokens = trainer_lib.model_inputs(batch)
  out = trainer.model.apply({"params": params}, frames, tokens)
  expected, _ = losses.contrastive_loss(out["image_emb"], out["text_emb"], out["logit_scale"],
                                        np.repeat(np.asarray(out["text_emb"])[:, None], k, axis=1))
  np.testing.assert_allclose(metrics["contrastive_loss"], expected, rtol=1e-5)
  assert metrics["contrastive_loss"] > plain["contrastive_loss"]


@pytest.mark.slow
def test_verb_phrases_enter_the_loss():
  """Each clip's `phrases` [batch, K, len] (len shorter than captions) are encoded like captions
  and scored against its clip embedding by the shapes project's registered term: the loss gains
  its weight times the closed form on the same embeddings."""
  from videococa.projects.shapes import losses  # pylint: disable=g-import-not-at-top
  config = _tiny()
  config.extensions = ("videococa.projects.shapes.losses",)
  config.input.extra_texts = dict(phrases=3)
  config.loss.terms = dict(verb_phrase=dict(weight=0.5, texts="phrases"))
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh))
  params = trainer.init_state().params
  rng = np.random.default_rng(1)
  batch_size, k, length, size = 4, 3, 5, config.model.vision.image_size
  text = rng.integers(4, config.model.vocab_size, (batch_size, config.model.max_len + 1))
  phrases = rng.integers(4, config.model.vocab_size, (batch_size, k, length))
  text[:, 0], text[:, -3:], phrases[..., 0], phrases[..., -1] = 2, 0, 2, 0  # BOS ... PAD.
  batch = dict(frames=rng.uniform(-1, 1, (batch_size, 1, size, size, 3)).astype(np.float32),
               text=text.astype(np.int32))
  plain, _ = trainer_lib.Trainer(_tiny(), trainer.mesh).loss_fn(params, batch)
  total, metrics = trainer.loss_fn(params, dict(batch, phrases=phrases.astype(np.int32)))
  frames, _ = trainer_lib.model_inputs(batch)
  image_emb, _ = trainer.model.apply({"params": params}, frames, method="encode_visual")
  phrase_emb, _ = trainer.model.apply({"params": params},
                                      phrases[..., :-1].reshape(-1, length - 1).astype(np.int32),
                                      method="encode_text")
  scale = trainer.model.apply({"params": params}, method="temperature_scale")
  expected, _ = losses.verb_phrase_loss(image_emb, phrase_emb.reshape(batch_size, k, -1), scale)
  np.testing.assert_allclose(metrics["verb_phrase_loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(total, plain + 0.5 * expected, rtol=1e-5)
