"""Caption decoding: greedy, beam search and temperature / top-k / top-p sampling.

Every method is one compiled loop (`lax.while_loop` over steps, exiting early once every caption
is finished) over a KV-cached decoder: the text encoder's and the multimodal decoder's
self-attention keys/values are appended to a cache one token at a time, and the cross-attention
keys/values of the captioning tokens are computed once per image/video (the prefill) and reused.

Captions are generated after `bos_id` for at most `max_new_tokens` tokens; a caption ends with
`eos_id` and is followed by `pad_id`. `pad_id` is never generated (the text encoder masks pad keys,
so a pad inside a caption would read differently when the caption is re-encoded). Scores are
log-probabilities under the model (untempered, unfiltered; pad excluded) of the tokens up to and
including EOS, divided for beam search by the GNMT length penalty `((5 + length) / 6) ** alpha`.

Everything is batch-major: jitted with batch-sharded `caption_tokens` inside
`videococa.train.sharding.use_mesh(mesh)`, the loop runs sharded over the mesh's batch axes.

  generate_fn = jax.jit(functools.partial(decoding.generate, model, max_new_tokens=20,
                                          method="beam", beam_size=4))
  out = generate_fn(params, caption_tokens)  # {'tokens': [B, 20] int32, 'scores': [B] float32}

`search` runs the same loops over any `step_fn(tokens [N], cache) -> (logits [N, vocab], cache)`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from videococa.models import coca

METHODS = ("greedy", "beam", "sample")

# `(tokens [N] int32, cache) -> (next-token logits [N, vocab] float32, cache)`.
StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
# `(cache, parents [batch, beams] int32) -> cache` (beam search; see `reorder_beams`).
ReorderFn = Callable[[Any, jax.Array], Any]


def generate(model: coca.Model, params: Any, caption_tokens: jax.Array, *, max_new_tokens: int,
             method: str = "greedy", beam_size: int = 4, length_penalty: float = 0.6,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             rng: jax.Array | None = None, bos_id: int = 2, eos_id: int = 3,
             pad_id: int = 0) -> dict[str, jax.Array]:
  """Captions for captioning tokens `[batch, queries, width]` (from `Model.encode_visual`).

  Args:
    model: the CoCa model (in decoding mode or not).
    params: its parameters.
    caption_tokens: `[batch, queries, width]`.
    max_new_tokens: tokens generated after BOS, at most `model.max_len`.
    method: 'greedy', 'beam' or 'sample'.
    beam_size: hypotheses kept per caption ('beam').
    length_penalty: GNMT alpha >= 0 ('beam'); 0 ranks finished hypotheses by log-probability.
    temperature: logits are divided by it before filtering ('sample').
    top_k: sample among the `top_k` most likely tokens; 0 = all ('sample').
    top_p: nucleus: sample among the fewest most likely tokens whose probability reaches `top_p`
      ('sample').
    rng: PRNG key ('sample').
    bos_id, eos_id, pad_id: token ids. An `eos_id` outside the vocabulary disables early stopping.

  Returns:
    tokens `[batch, max_new_tokens]` int32 (the caption, EOS, then pad_id; a caption cut at
    `max_new_tokens` has no EOS) and scores `[batch]` float32 (see the module docstring).
  """
  _check_model(model, max_new_tokens)
  decoder = model.clone(decoding=True)
  bos = jnp.full((caption_tokens.shape[0], 1), bos_id, jnp.int32)
  cache = coca.init_decode_cache(decoder, params, caption_tokens, max_new_tokens)
  logits, variables = decoder.apply({"params": params, "cache": cache}, bos, caption_tokens,
                                    method="decode_step", mutable=["cache"])
  return search(functools.partial(_cached_step, decoder, params), logits[:, -1].astype(jnp.float32),
                variables["cache"], max_new_tokens=max_new_tokens, method=method,
                beam_size=beam_size, length_penalty=length_penalty, temperature=temperature,
                top_k=top_k, top_p=top_p, rng=rng, eos_id=eos_id, pad_id=pad_id,
                reorder_fn=reorder_beams)


def caption(model: coca.Model, params: Any, frames: jax.Array, **kwargs) -> dict[str, jax.Array]:
  """`generate` on frames `[batch, frames, H, W, 3]` (or images `[batch, H, W, 3]`): uint8 pixels
  (normalised with the model's `image_mean` / `image_std`) or normalised floats."""
  _, caption_tokens = model.apply({"params": params}, frames, method="encode_visual")
  return generate(model, params, caption_tokens, **kwargs)


def greedy_uncached(model: coca.Model, params: Any, caption_tokens: jax.Array, *,
                    max_new_tokens: int, bos_id: int = 2, eos_id: int = 3,
                    pad_id: int = 0) -> dict[str, jax.Array]:
  """Greedy decoding without caches (what open_clip does): every step re-runs `encode_text`,
  `decode` (cross-attention keys/values included) and `logits` on the whole prefix, kept at the
  fixed length `max_new_tokens` (BOS, the tokens so far, pads). Same outputs as
  `generate(..., method='greedy')`; the reference for tests and the benchmark's baseline."""
  _check_model(model, max_new_tokens)
  model = model.clone(decoding=False)
  prefix = jnp.full((caption_tokens.shape[0], max_new_tokens), pad_id, jnp.int32)
  prefix = prefix.at[:, 0].set(bos_id)
  position = jnp.zeros((), jnp.int32)
  logits = _prefix_logits(model, params, caption_tokens, prefix, position)
  step_fn = functools.partial(_prefix_step, model, params, caption_tokens)
  return search(step_fn, logits, (prefix, position), max_new_tokens=max_new_tokens,
                method="greedy", eos_id=eos_id, pad_id=pad_id)


def search(step_fn: StepFn, logits: jax.Array, cache: Any, *, max_new_tokens: int,
           method: str = "greedy", beam_size: int = 4, length_penalty: float = 0.6,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           rng: jax.Array | None = None, eos_id: int = 3, pad_id: int = 0,
           reorder_fn: ReorderFn | None = None) -> dict[str, jax.Array]:
  """Decoding loop over any `step_fn` (options as in `generate`; returns the same dict).

  `logits` `[batch, vocab]` float32 are the first new token's logits and `cache` the state after
  reading BOS; `step_fn` feeds each chosen token (`[batch]`, or `[batch * beam_size]` beam-major
  per caption for beam search). Beam search also needs `reorder_fn` to make the beams from the
  `batch` rows of `cache` and to reorder them every step.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; choose one of {METHODS}.")
  if pad_id == eos_id:
    raise ValueError(f"pad_id and eos_id are both {pad_id}; pad must be a distinct token.")
  common = dict(step_fn=step_fn, logits=logits, cache=cache, max_new_tokens=max_new_tokens,
                eos_id=eos_id, pad_id=pad_id)
  if method == "greedy":
    return _token_loop(choose=lambda logp, i: jnp.argmax(logp, axis=-1).astype(jnp.int32),
                       **common)
  if method == "sample":
    return _token_loop(choose=_sampler(temperature, top_k, top_p, rng, logits.shape[-1]),
                       **common)
  if beam_size < 1 or length_penalty < 0:
    raise ValueError(f"beam_size={beam_size} must be >= 1 and length_penalty={length_penalty} "
                     ">= 0.")
  if reorder_fn is None:
    raise ValueError("Beam search needs a reorder_fn to gather cache rows.")
  return _beam_search(beam_size=beam_size, length_penalty=length_penalty, reorder_fn=reorder_fn,
                      **common)


def reorder_beams(cache: Any, parents: jax.Array) -> Any:
  """Beam-search reordering of a model decoding cache (arrays `[layers, batch * beams, ...]`).

  `parents` `[batch, new_beams]`: new beam j of caption b continues old beam `parents[b, j]` of the
  same caption (old beams: 1 when the beams are first made, else new_beams). A gather within each
  caption (a gather of flat batch rows, but kept local to the batch shard
  instead of gathering the cache onto every device); cross-attention keys/values, equal over a
  caption's beams, are only copied when the beams are made.
  """
  batch, beams = parents.shape

  def gather(path, x):
    if x.ndim < 2:  # Cache indices and positions.
      return x
    old_beams = x.shape[1] // batch
    if old_beams == beams and any("cross_attn" in str(getattr(k, "key", "")) for k in path):
      return x
    x = x.reshape(x.shape[0], batch, old_beams, *x.shape[2:])
    index = parents.reshape(1, batch, beams, *[1] * (x.ndim - 3))
    x = jnp.take_along_axis(x, index, axis=2)
    return x.reshape(x.shape[0], batch * beams, *x.shape[3:])
  return jax.tree_util.tree_map_with_path(gather, cache)


def _check_model(model: coca.Model, max_new_tokens: int):
  if not model.decoder["depth"]:
    raise ValueError("The model has no multimodal decoder (model.decoder.depth=0): it cannot "
                     "caption.")
  if not 1 <= max_new_tokens <= model.max_len:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be in [1, model.max_len="
                     f"{model.max_len}] (BOS and all but the last new token are fed to the model).")


def _cached_step(decoder: coca.Model, params: Any, tokens: jax.Array, cache: Any):
  """Feeds `tokens` `[batch]` to the cached decoder -> (logits `[batch, vocab]`, cache)."""
  logits, variables = decoder.apply({"params": params, "cache": cache}, tokens[:, None],
                                    method="decode_step", mutable=["cache"])
  return logits[:, -1].astype(jnp.float32), variables["cache"]


def _prefix_logits(model, params, caption_tokens, prefix, position):
  """Runs the whole model on `prefix` `[batch, len]` -> logits `[batch, vocab]` at `position`."""
  def forward(module):
    _, features = module.encode_text(prefix)
    hidden = module.decode(features, caption_tokens)
    return module.logits(jax.lax.dynamic_index_in_dim(hidden, position, 1, keepdims=False))
  return model.apply({"params": params}, method=forward).astype(jnp.float32)


def _prefix_step(model, params, caption_tokens, tokens, state):
  """`step_fn` of `greedy_uncached`: its 'cache' is (prefix `[batch, len]`, last position)."""
  prefix, position = state
  position = position + 1
  prefix = jax.lax.dynamic_update_index_in_dim(prefix, tokens, position, 1)
  return _prefix_logits(model, params, caption_tokens, prefix, position), (prefix, position)


def _log_probs(logits: jax.Array, pad_id: int) -> jax.Array:
  """Log-softmax over the vocabulary without pad (never generated): `[..., vocab]` float32."""
  return jax.nn.log_softmax(logits.at[..., pad_id].set(-jnp.inf), axis=-1)


def _advance(step_fn, go, tokens, logits, cache):
  """`step_fn(tokens, cache)` if `go`, else (logits, cache) unchanged (no step after the last)."""
  return jax.lax.cond(go, step_fn, lambda _, c: (logits, c), tokens, cache)


def _token_loop(*, step_fn, logits, cache, choose, max_new_tokens, eos_id, pad_id):
  """Greedy / sampling: one token per caption per step; finished captions emit pad."""
  batch = logits.shape[0]

  def cond(state):
    i, _, _, _, done, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, logits, cache, tokens, done, scores = state
    logp = _log_probs(logits, pad_id)
    token = jnp.where(done, pad_id, choose(logp, i))
    token_logp = jnp.take_along_axis(logp, token[:, None], axis=1)[:, 0]
    scores = scores + jnp.where(done, 0.0, token_logp)
    tokens = tokens.at[:, i].set(token)
    done = done | (token == eos_id)
    go = (i + 1 < max_new_tokens) & ~jnp.all(done)
    logits, cache = _advance(step_fn, go, token, logits, cache)
    return i + 1, logits, cache, tokens, done, scores

  state = (jnp.zeros((), jnp.int32), logits, cache,
           jnp.full((batch, max_new_tokens), pad_id, jnp.int32), jnp.zeros(batch, bool),
           jnp.zeros(batch, jnp.float32))
  _, _, _, tokens, _, scores = jax.lax.while_loop(cond, body, state)
  return dict(tokens=tokens, scores=scores)


def _sampler(temperature: float, top_k: int, top_p: float, rng: jax.Array | None, vocab: int):
  """`choose(logp [batch, vocab], step) -> tokens [batch]` drawing from the filtered softmax."""
  if rng is None:
    raise ValueError("method='sample' needs a PRNG key: rng=jax.random.key(seed).")
  if temperature <= 0 or not 0 <= top_k <= vocab or not 0 < top_p <= 1:
    raise ValueError(f"temperature={temperature} must be > 0, top_k={top_k} in [0, {vocab}] "
                     f"and top_p={top_p} in (0, 1].")

  def choose(logp, step):
    logits = logp / temperature
    if top_k:
      kth_largest = _top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p < 1:
      logits = _nucleus(logits, top_p)
    return jax.random.categorical(jax.random.fold_in(rng, step), logits).astype(jnp.int32)
  return choose


def _nucleus(logits: jax.Array, top_p: float) -> jax.Array:
  """Keeps the most likely tokens until their probability reaches `top_p` (at least one)."""
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(ordered, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  threshold = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def _length_penalty(length, alpha: float):
  return ((5.0 + length) / 6.0) ** alpha


def _beam_search(*, step_fn, logits, cache, beam_size, length_penalty, reorder_fn,
                 max_new_tokens, eos_id, pad_id):
  """Beam search with a top-`beam_size` buffer of finished hypotheses per caption.

  Each step expands the `[batch, beam]` alive hypotheses to their 2 * beam best continuations.
  EOS among the best `beam` continuations moves that hypothesis to the finished buffer (scored
  log-prob / length penalty; lower-ranked EOS continuations are dropped, as in fairseq, so that
  beam_size=1 with length_penalty=0 is greedy); the best `beam` non-EOS continuations stay alive.
  Hypotheses reaching `max_new_tokens` finish without EOS. A caption is done once its worst
  finished score is at least the best any alive hypothesis can still reach (alive log-prob over the
  largest length penalty: log-probs only fall and the penalty only grows, for alpha >= 0).
  Returns the best finished hypothesis per caption.
  """
  batch, vocab = logits.shape
  k = beam_size
  cache = reorder_fn(cache, jnp.zeros((batch, k), jnp.int32))
  logits = jnp.repeat(logits, k, axis=0)
  longest = _length_penalty(max_new_tokens, length_penalty)

  def cond(state):
    i, *_, done = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, logits, cache, alive_seqs, alive_logp, finished_seqs, finished_scores, _ = state
    logp = alive_logp[..., None] + _log_probs(logits, pad_id).reshape(batch, k, vocab)
    cand_logp, flat = _top_k(logp.reshape(batch, k * vocab), 2 * k)  # [batch, 2k]
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    cand_seqs = jnp.take_along_axis(alive_seqs, parent[..., None], axis=1).at[:, :, i].set(token)
    ends = (token == eos_id) | (i + 1 == max_new_tokens)
    finishing = ends & (jnp.arange(2 * k) < k)  # Lower-ranked EOS continuations are dropped.
    new_scores = jnp.where(finishing, cand_logp / _length_penalty(i + 1, length_penalty), -jnp.inf)
    finished_seqs, finished_scores, _ = _top_k_rows(
        jnp.concatenate([finished_seqs, cand_seqs], axis=1),
        jnp.concatenate([finished_scores, new_scores], axis=1), k)
    alive_seqs, alive_logp, keep = _top_k_rows(cand_seqs, jnp.where(ends, -jnp.inf, cand_logp), k)
    done = finished_scores[:, -1] >= alive_logp[:, 0] / longest
    go = (i + 1 < max_new_tokens) & ~jnp.all(done)
    parents = jnp.take_along_axis(parent, keep, axis=1)
    logits, cache = _advance(lambda t, c: step_fn(t, reorder_fn(c, parents)), go,
                             alive_seqs[:, :, i].reshape(-1), logits, cache)
    return (i + 1, logits, cache, alive_seqs, alive_logp, finished_seqs, finished_scores, done)

  seqs = jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32)
  first = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)  # All beams start equal: expand one.
  state = (jnp.zeros((), jnp.int32), logits, cache, seqs, jnp.tile(first, (batch, 1)), seqs,
           jnp.full((batch, k), -jnp.inf), jnp.zeros(batch, bool))
  finished_seqs, finished_scores = jax.lax.while_loop(cond, body, state)[5:7]
  return dict(tokens=finished_seqs[:, 0], scores=finished_scores[:, 0])


def _top_k_rows(seqs: jax.Array, scores: jax.Array, k: int):
  """The `k` best of `[batch, n, len]` sequences by `[batch, n]` scores -> (seqs, scores,
  indices `[batch, k]`), best first."""
  top_scores, indices = _top_k(scores, k)
  top_seqs = jnp.take_along_axis(seqs, indices[..., None], axis=1)
  return top_seqs, top_scores, indices


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """`lax.top_k` over the last axis (ties: lower index first) as a stable sort, which XLA's SPMD
  partitioner splits over a sharded batch axis (it gathers `TopK`'s operand onto every device)."""
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  negated, index = jax.lax.sort((-x, index), dimension=x.ndim - 1, is_stable=True, num_keys=1)
  return -negated[..., :k], index[..., :k]
