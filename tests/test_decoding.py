"""Caption decoding: cached == uncached greedy, beam search, sampling, EOS handling, sharding."""
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from videococa.models import coca, decoding, presets
from videococa.train import sharding

BATCH = 8
PAD, BOS, A, B = 0, 2, 4, 5  # A, B: token ids of the constructed Markov chain.


def _text_side(module, tokens, caption_tokens):
  return module.logits(module.decode(module.encode_text(tokens)[1], caption_tokens))


@pytest.fixture(scope="module")
def tiny():
  """coca_tiny with random parameters for the text side (all that decoding reads: the visual
  towers would triple the initialisation's compile time) and random captioning tokens, which give
  every row its own caption (a random-init visual tower gives near-identical tokens for all)."""
  cfg = presets.get("coca_tiny")
  model = coca.Model(**cfg)
  caption_tokens = jax.random.normal(jax.random.key(1), (BATCH, cfg.pooler.num_queries,
                                                         cfg.pooler.width))
  init = jax.jit(functools.partial(model.init, method=_text_side))
  params = init(jax.random.key(0, impl="rbg"), jnp.zeros((1, cfg.max_len), jnp.int32),
                caption_tokens[:1])
  return model, nn.unbox(params["params"]), caption_tokens


def _generate(tiny, **kwargs):
  model, params, caption_tokens = tiny
  kwargs.setdefault("max_new_tokens", model.max_len)
  rng = kwargs.pop("rng", None)
  fn = jax.jit(functools.partial(decoding.generate, model, **kwargs))
  return jax.device_get(fn(params, caption_tokens, rng=rng))


@pytest.fixture(scope="module")
def unstopped(tiny):
  """Greedy captions without EOS (an id outside the vocabulary): all max_len tokens."""
  return _generate(tiny, eos_id=-1)


@pytest.fixture(scope="module")
def eos(unstopped):
  """An EOS id that the random model emits (never first) in about half of the captions."""
  tokens = unstopped["tokens"]
  rows_with = {t: (tokens == t).any(1).sum() for t in np.unique(tokens[:, 1:])
               if t > 3 and t not in tokens[:, 0]}
  return int(min(rows_with, key=lambda t: abs(rows_with[t] - BATCH / 2)))


@pytest.fixture(scope="module")
def greedy(tiny, eos):
  return _generate(tiny, eos_id=eos)


@pytest.fixture(scope="module")
def beam(tiny, eos):
  return _generate(tiny, method="beam", beam_size=3, eos_id=eos)


def _first(tokens, token):
  """Index of the first `token` per row, or the length when there is none."""
  found = tokens == token
  return np.where(found.any(1), found.argmax(1), tokens.shape[1])


def _assert_pads_after_eos(tokens, eos):
  ends = _first(tokens, eos)
  after = np.arange(tokens.shape[1]) > ends[:, None]
  assert (tokens[after] == PAD).all() and (tokens[~after] != PAD).all()
  return ends


def test_cached_greedy_equals_uncached_greedy(tiny, eos, greedy):
  model, params, caption_tokens = tiny
  uncached = jax.jit(functools.partial(decoding.greedy_uncached, model,
                                       max_new_tokens=model.max_len, eos_id=eos))
  reference = jax.device_get(uncached(params, caption_tokens))
  np.testing.assert_array_equal(greedy["tokens"], reference["tokens"])
  np.testing.assert_allclose(greedy["scores"], reference["scores"], rtol=1e-5)
  ends = _first(greedy["tokens"], eos)
  assert 0 < (ends < model.max_len).sum() < BATCH  # Both finished and cut-off captions.


def test_captions_depend_on_the_captioning_tokens(unstopped):
  assert len({tuple(row) for row in unstopped["tokens"]}) == BATCH


def test_greedy_stops_at_eos(unstopped, eos, greedy):
  """EOS ends a caption (then pads); before it, the tokens are those generated without EOS."""
  ends = _assert_pads_after_eos(greedy["tokens"], eos)
  before = np.arange(greedy["tokens"].shape[1]) <= ends[:, None]
  np.testing.assert_array_equal(greedy["tokens"][before], unstopped["tokens"][before])


def test_greedy_scores_are_teacher_forced_log_probs_up_to_eos(tiny, eos, greedy):
  model, params, caption_tokens = tiny
  tokens = greedy["tokens"]
  prefix = np.concatenate([np.full((BATCH, 1), BOS), tokens[:, :-1]], axis=1)

  def forward(module, prefix):
    _, features = module.encode_text(prefix)
    return module.logits(module.decode(features, caption_tokens))

  logits = jax.jit(functools.partial(model.apply, method=forward))({"params": params}, prefix)
  logp = np.asarray(jax.nn.log_softmax(logits.at[..., PAD].set(-jnp.inf)))
  token_logp = np.take_along_axis(logp, tokens[..., None], axis=2)[..., 0]
  counted = np.arange(tokens.shape[1]) <= _first(tokens, eos)[:, None]
  np.testing.assert_allclose(greedy["scores"], np.where(counted, token_logp, 0).sum(1), rtol=1e-4)


def test_beam_size_one_is_greedy(tiny, eos, greedy):
  beam = _generate(tiny, method="beam", beam_size=1, length_penalty=0.0, eos_id=eos)
  np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
  np.testing.assert_allclose(beam["scores"], greedy["scores"], rtol=1e-5)


def test_beam_search_pads_after_eos(tiny, eos, beam):
  model, _, _ = tiny
  ends = _assert_pads_after_eos(beam["tokens"], eos)
  assert (ends < model.max_len).any()
  assert np.isfinite(beam["scores"]).all() and (beam["scores"] < 0).all()


def _markov_chain(table):
  """A `search` step function whose next-token logits depend only on the last token."""
  logits = jnp.log(jnp.asarray(table, jnp.float32) + 1e-9)
  return lambda tokens, cache: (logits[tokens], cache), logits


def _chain_table():
  """Vocabulary (pad, unk, bos, eos, A, B). From BOS, A (0.55) beats B (0.45), but A is followed by
  more A with probability 0.4 at most, while B ends (EOS) with probability 0.9."""
  table = np.full((6, 6), 0.0)
  table[BOS, [A, B]] = 0.55, 0.45
  table[A, [A, 1, 3]] = 0.4, 0.3, 0.3
  table[B, [3, A]] = 0.9, 0.1
  table[[0, 1, 3], 3] = 1.0
  return table


def _run_chain(table, **options):
  step_fn, logits = _markov_chain(table)
  first = jnp.tile(logits[BOS], (2, 1))
  search = functools.partial(decoding.search, step_fn, eos_id=3,
                             reorder_fn=lambda cache, parents: cache, **options)
  return jax.device_get(jax.jit(search)(first, ()))


def test_beam_search_beats_greedy_on_constructed_chain():
  greedy = _run_chain(_chain_table(), max_new_tokens=6, method="greedy")
  np.testing.assert_array_equal(greedy["tokens"], [[A] * 6] * 2)
  np.testing.assert_allclose(greedy["scores"], np.log(0.55) + 5 * np.log(0.4), rtol=1e-5)
  for length_penalty in (0.0, 0.6):
    beam = _run_chain(_chain_table(), max_new_tokens=6, method="beam", beam_size=2,
                      length_penalty=length_penalty)
    np.testing.assert_array_equal(beam["tokens"], [[B, 3, 0, 0, 0, 0]] * 2)
    np.testing.assert_allclose(beam["scores"], np.log(0.45 * 0.9) / (7 / 6) ** length_penalty,
                               rtol=1e-5)
    assert (beam["scores"] > greedy["scores"]).all()


def test_wide_beam_search_is_exhaustive():
  """With a beam holding every candidate, beam search returns the best length-normalised sequence
  of all (checked by enumeration on a random 5-token chain: pad, unk, bos, eos, A)."""
  table = np.random.default_rng(0).dirichlet(np.full(5, 0.5), size=5)
  table[:, PAD] = 0
  length, alpha = 3, 0.6
  beam = _run_chain(table / table.sum(1, keepdims=True), max_new_tokens=length, method="beam",
                    beam_size=4 * 3 ** (length - 1), length_penalty=alpha)
  logits = np.log(table + 1e-9)  # As in `_markov_chain`; pad is never generated.
  logits[:, PAD] = -np.inf
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  best, best_score = None, -np.inf
  for n in range(1, length + 1):
    for body in itertools.product([1, BOS, A], repeat=n - 1):
      for sequence in [(*body, 3)] + ([(*body, t) for t in (1, BOS, A)] if n == length else []):
        score = sum(logp[a, b] for a, b in zip((BOS, *sequence), sequence))
        if score / ((5 + n) / 6) ** alpha > best_score:
          best, best_score = sequence, score / ((5 + n) / 6) ** alpha
  np.testing.assert_array_equal(beam["tokens"][0], np.pad(best, (0, length - len(best))))
  np.testing.assert_allclose(beam["scores"], best_score, rtol=1e-5)


def test_top_k_1_sampling_is_greedy(tiny, eos, greedy):
  out = _generate(tiny, method="sample", top_k=1, rng=jax.random.key(3), eos_id=eos)
  np.testing.assert_array_equal(out["tokens"], greedy["tokens"])
  np.testing.assert_allclose(out["scores"], greedy["scores"], rtol=1e-5)


def test_sampling_is_deterministic_given_the_key(tiny):
  model, params, caption_tokens = tiny
  sample = jax.jit(lambda rng: decoding.generate(
      model, params, caption_tokens, max_new_tokens=model.max_len, method="sample", top_k=20,
      top_p=0.95, rng=rng)["tokens"])
  first, again, other = (np.asarray(sample(jax.random.key(seed))) for seed in (0, 0, 1))
  np.testing.assert_array_equal(first, again)
  assert (first != other).mean() > 0.5


@pytest.mark.parametrize("options,expected", [
    (dict(), [0.55, 0.45]),
    (dict(temperature=0.5), np.array([0.55, 0.45]) ** 2 / (0.55 ** 2 + 0.45 ** 2)),
    (dict(top_p=0.5), [1.0, 0.0]),  # A alone reaches 0.5.
    (dict(top_p=0.6), [0.55, 0.45]),
])
def test_sampling_distribution(options, expected):
  """First-token frequencies of 4000 draws from the chain's BOS row (A 0.55, B 0.45)."""
  step_fn, logits = _markov_chain(_chain_table())
  first = jnp.tile(logits[BOS], (4000, 1))
  sample = jax.jit(functools.partial(decoding.search, step_fn, max_new_tokens=1, method="sample",
                                     eos_id=3, **options))
  tokens = sample(first, (), rng=jax.random.key(0))["tokens"][:, 0]
  frequencies = [np.mean(tokens == A), np.mean(tokens == B)]
  np.testing.assert_allclose(frequencies, expected, atol=0.03)


@pytest.mark.parametrize("options", [dict(method="greedy"), dict(method="beam", beam_size=3)],
                         ids=lambda o: o["method"])
def test_sharded_generate_equals_single_device(tiny, eos, greedy, beam, options):
  model, params, caption_tokens = tiny
  expected = beam if options["method"] == "beam" else greedy
  mesh = sharding.make_mesh(dict(data=8))
  fn = jax.jit(functools.partial(decoding.generate, model, max_new_tokens=model.max_len,
                                 eos_id=eos, **options))
  with sharding.use_mesh(mesh):
    out = fn(jax.device_put(params, NamedSharding(mesh, P())),
             jax.device_put(caption_tokens, sharding.batch_sharding(mesh, 3)))
  assert out["tokens"].sharding.is_equivalent_to(sharding.batch_sharding(mesh, 2), 2)
  np.testing.assert_array_equal(jax.device_get(out["tokens"]), expected["tokens"])
  np.testing.assert_allclose(jax.device_get(out["scores"]), expected["scores"], rtol=1e-5)


def _take_rows(cache, rows):
  """Reference: gather batch rows of every `[layers, batch, ...]` cache array."""
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=1) if x.ndim >= 2 else x, cache)


def test_reorder_beams_equals_gathering_flat_rows(tiny):
  model, params, caption_tokens = tiny
  cache = jax.eval_shape(lambda: coca.init_decode_cache(model, params, caption_tokens[:4], 6))
  cache = jax.tree.map(lambda x: np.random.default_rng(x.ndim).normal(size=x.shape), cache)
  parents = np.random.default_rng(0).integers(0, 3, (4, 3))
  flat = (np.arange(4)[:, None] * 3 + parents).reshape(-1)

  @jax.jit
  def reorder(cache):
    beams = decoding.reorder_beams(cache, jnp.zeros((4, 3), jnp.int32))
    expected_beams = _take_rows(cache, jnp.repeat(jnp.arange(4), 3))
    return (beams, expected_beams, decoding.reorder_beams(beams, parents),
            _take_rows(beams, flat))

  beams, expected_beams, reordered, expected = reorder(cache)
  jax.tree.map(np.testing.assert_array_equal, beams, expected_beams)
  # Cross-attention keys/values are equal over beams: reordering leaves them as they are.
  del reordered["text_decoder"]["decoder"]["layers"]["cross_attn"]
  del expected["text_decoder"]["decoder"]["layers"]["cross_attn"]
  jax.tree.map(np.testing.assert_array_equal, reordered, expected)


def test_caption_runs_the_visual_encoder_then_generate(tiny):
  model, _, _ = tiny
  frames = jnp.zeros((2, 1, 32, 32, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), frames, jnp.zeros((2, 4), jnp.int32))
  out = jax.eval_shape(functools.partial(decoding.caption, model, max_new_tokens=4),
                       nn.unbox(params["params"]), frames)
  assert out["tokens"].shape == (2, 4) and out["tokens"].dtype == jnp.int32
  assert out["scores"].shape == (2,) and out["scores"].dtype == jnp.float32


def test_invalid_options_raise(tiny):
  model, params, caption_tokens = tiny
  with pytest.raises(ValueError, match="max_new_tokens=13"):
    decoding.generate(model, params, caption_tokens, max_new_tokens=13)
  step_fn, logits = _markov_chain(_chain_table())
  search = functools.partial(decoding.search, step_fn, logits[BOS][None], (), max_new_tokens=2)
  with pytest.raises(ValueError, match="method='nucleus'"):
    search(method="nucleus")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    search(method="sample")
  with pytest.raises(ValueError, match="top_p=0"):
    search(method="sample", top_p=0.0, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="needs a reorder_fn"):
    search(method="beam")
  with pytest.raises(ValueError, match="pad_id and eos_id"):
    search(eos_id=0)
