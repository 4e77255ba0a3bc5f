"""Tests of the tf.data pipelines: pp ops, determinism, sharding, resume, mixtures, cache, eval."""
import os
import types

import jax
import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from videococa.data import pipeline, preprocess, tokenizer  # noqa: E402
from videococa.projects.shapes import scenes as shapes  # noqa: E402

from conftest import SHAPES_SIZES as SIZES  # noqa: E402
T, S, MAX_LEN, B = 4, 32, 16, 8  # Frames, image size, model text length, local batch.
VIDEO_PP = (f'sample_frames({T}, mode="random_segment")|decode_video|'
            f'random_resized_crop({S}, scale=(0.5, 1.0))|choose_caption|tokenize({MAX_LEN + 1})|'
            'keep("frames", "text", "id")')
IMAGE_PP = (f'decode_image|random_resized_crop({S}, scale=(0.5, 1.0))|image_to_clip({T})|'
            f'choose_caption|tokenize({MAX_LEN + 1})|keep("frames", "text", "id")')


@pytest.fixture(scope="module")
def env(shapes_tfds, tmp_path_factory):
  """The session's small shapes_video video + image views and a tokenizer on their captions."""
  root = tmp_path_factory.mktemp("pipeline")
  data = {view: dict(name=f"shapes_video/{view}", split="train", data_dir=shapes_tfds["data_dir"],
                     config_overrides=SIZES) for view in ("video", "image")}
  captions = [c for view in ("video", "image")
              for c in tokenizer.captions_from_builder(shapes_tfds[view], "train")]
  tok_path = tokenizer.train(captions, 200, root / "spm")
  return dict(data=data, tok=tokenizer.Tokenizer(tok_path), tok_path=tok_path, root=root)


def _config(env, seed=0, mixture=None, **input_kw):
  return ml_collections.ConfigDict(dict(
      seed=seed, model=dict(max_len=MAX_LEN, vocab_size=1000, vision=dict(image_size=S)),
      input={**dict(num_frames=T, data=env["data"]["video"], pp=VIDEO_PP, mixture=mixture or {},
                    tokenizer=env["tok_path"], shuffle_buffer=32), **input_kw}))


def _batches(env, config, num, start_step=0):
  ds = pipeline.train_dataset(config, B, start_step, env["tok"], extra_keys=("id",))
  return list(ds.take(num).as_numpy_iterator())


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------- pp ops.
def test_pp_string_errors_name_the_op():
  with pytest.raises(ValueError, match=r"Unknown pp op 'decode_vid'.*known ops:.*decode_video"):
    preprocess.get_preprocess_fn("decode_vid|keep('frames')")
  with pytest.raises(ValueError, match=r"Cannot parse pp op 'resize\(64,'"):
    preprocess.get_preprocess_fn("decode_video|resize(64,")
  with pytest.raises(ValueError, match=r"Bad arguments for pp op 'sample_frames\(8, foo=1\)'"):
    preprocess.get_preprocess_fn("sample_frames(8, foo=1)")
  with pytest.raises(ValueError, match="mode='center'"):
    preprocess.get_preprocess_fn("sample_frames(8, mode='center')")
  with pytest.raises(ValueError, match="needs a tokenizer"):
    preprocess.get_preprocess_fn("choose_caption|tokenize(17)")
  assert preprocess.op_names("decode_video|resize(64)") == ["decode_video", "resize"]


def test_frame_sampling_indices():
  clip = tf.constant(np.broadcast_to(np.arange(16, dtype=np.uint8)[:, None, None, None],
                                     (16, 2, 2, 3)))  # Frame k has value k.
  out = preprocess.get_preprocess_fn("sample_frames(8)")({"frames": clip})["frames"]
  np.testing.assert_array_equal(out[:, 0, 0, 0], [1, 3, 5, 7, 9, 11, 13, 15])  # Segment centres.
  short = preprocess.frame_indices(3, 8, "uniform").numpy()  # Shorter clip: repeats frames.
  np.testing.assert_array_equal(short, [0, 0, 0, 1, 1, 2, 2, 2])  # floor((i + 0.5) * 3 / 8).
  seeds = [tf.constant([s, 7], tf.int64) for s in range(20)]
  draws = np.stack([preprocess.frame_indices(16, 4, "random_segment", s).numpy() for s in seeds])
  for i in range(4):  # One frame inside each of the 4 segments, not always the same one.
    assert ((draws[:, i] >= 4 * i) & (draws[:, i] < 4 * i + 4)).all()
    assert len(set(draws[:, i])) > 1
  np.testing.assert_array_equal(
      preprocess.frame_indices(16, 4, "random_segment", seeds[0]), draws[0])  # Deterministic.


def test_random_crop_and_flip_are_the_same_for_all_frames():
  image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
  clip = {"frames": tf.constant(np.stack([image] * 5))}
  pp = preprocess.get_preprocess_fn("random_resized_crop(32, scale=(0.2, 0.5))|flip_lr(p=0.5)")
  outs = [pp({**clip, preprocess.SEED_KEY: tf.constant([s, 1], tf.int64)})["frames"].numpy()
          for s in range(6)]
  for out in outs:
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    assert all((frame == out[0]).all() for frame in out)  # Same crop (and flip) for every frame.
  assert len({o.tobytes() for o in outs}) == len(outs)  # ... but a different one per seed.
  resized = preprocess.get_preprocess_fn("resize(32)|value_range(-1, 1)")(clip)["frames"]
  assert resized.shape == (5, 32, 32, 3) and resized.dtype == tf.float32
  assert -1 <= resized.numpy().min() < resized.numpy().max() <= 1


# ----------------------------------------------------------------------------- Training.
def test_train_batch_shapes_and_tokens(env):
  config = _config(env)
  batch = next(pipeline.make_train_iterator(config, B, 0, workdir=str(env["root"])))
  assert set(batch) == {"frames", "text"}
  assert batch["frames"].shape == (B, T, S, S, 3) and batch["frames"].dtype == np.uint8
  assert batch["frames"].std() > 10  # Real pixels, not padding.
  text = batch["text"]
  assert text.shape == (B, MAX_LEN + 1) and text.dtype == np.int32
  assert (text[:, 0] == tokenizer.BOS_ID).all()
  for row in text:
    eos = np.flatnonzero(row == tokenizer.EOS_ID)
    assert len(eos) == 1
    assert (row[eos[0] + 1:] == tokenizer.PAD_ID).all() and (row[1:eos[0]] > tokenizer.EOS_ID).all()
  assert env["tok"].decode(text[:1])[0]


@pytest.mark.parametrize("op,texts,out,length,rewrite", [
    ("motion_negatives", "negative_captions", "negatives", MAX_LEN + 1, shapes.motion_negatives),
    ("motion_phrases", "phrase_captions", "phrases", 9, shapes.motion_phrases),
])
def test_motion_text_batches(env, op, texts, out, length, rewrite):
  """Per-clip rewrites of the chosen caption (the shapes project's pp ops) are batched as
  `[batch, K, length]` and match the shapes functions; `config.input.extra_texts` declares K."""
  from videococa.projects.shapes import pp_ops  # noqa: F401  pylint: disable=g-import-not-at-top
  pp = VIDEO_PP.replace(
      'keep("frames", "text", "id")',
      f'{op}|tokenize({length}, key="{texts}", out="{out}")|'
      f'keep("frames", "text", "{out}", "caption", "label")')
  k = len(rewrite("moves up", "up"))
  config = _config(env, pp=pp, extra_texts={out: k})
  batch = pipeline.train_dataset(config, B, 0, env["tok"], extra_keys=("caption", "label"))
  batch = next(batch.take(1).as_numpy_iterator())
  assert batch[out].shape == (B, k, length) and batch[out].dtype == np.int32
  for caption, tokens, label in zip(batch["caption"], batch[out], batch["label"]):
    expected = rewrite(caption.decode(), shapes.MOTIONS[label])
    np.testing.assert_array_equal(tokens, env["tok"].encode(expected, length))
  with pytest.raises(Exception, match=out):  # The config asks for them, the pp lacks them.
    pipeline.train_dataset(_config(env, extra_texts={out: k}), B, 0, env["tok"])


def test_same_seed_same_batches_other_seed_other_batches(env):
  first = _batches(env, _config(env), 2)
  _assert_same(first, _batches(env, _config(env), 2))
  other = _batches(env, _config(env, seed=1), 2)
  assert not np.array_equal(first[0]["frames"], other[0]["frames"])
  assert list(first[0]["id"]) != list(other[0]["id"])


def test_resume_is_exact_across_epochs(env):
  config = _config(env)  # 64 examples / 8 per batch: an epoch is 8 steps.
  full = _batches(env, config, 11)
  _assert_same(_batches(env, config, 4, start_step=7), full[7:])
  assert len({i for b in full[:8] for i in b["id"]}) == 64  # Every example once per epoch ...
  assert [i for b in full[:3] for i in b["id"]] != [i for b in full[8:] for i in b["id"]]
  # ... in a new order the next epoch.


def test_mixture_resume_is_exact(env):
  mixture = {"video": dict(env["data"]["video"], weight=0.6, pp=VIDEO_PP),
             "image": dict(env["data"]["image"], weight=0.4, pp=IMAGE_PP)}
  config = _config(env, mixture=mixture)
  full = _batches(env, config, 6)
  _assert_same(_batches(env, config, 3, start_step=3), full[3:])
  frames = np.concatenate([b["frames"] for b in full])
  static = (frames == frames[:, :1]).all(axis=(1, 2, 3, 4))  # Images make static clips.
  assert 0.15 < static.mean() < 0.85  # Both members appear.
  counts = pipeline.mixture_counts([0.6, 0.4], [1, 2], 10_000)
  assert counts.sum() == 10_000 and 5700 < counts[0] < 6300


def test_cache_gives_the_same_batches(env):
  _assert_same(_batches(env, _config(env, cache=True), 10), _batches(env, _config(env), 10))


def test_processes_get_disjoint_examples(env, monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  ids = []
  for index in range(2):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    ids.append({i for b in _batches(env, _config(env), 4) for i in b["id"]})  # One epoch.
  assert len(ids[0]) == len(ids[1]) == 32 and not ids[0] & ids[1]


def test_pp_output_must_match_the_model(env):
  config = _config(env)
  config.input.num_frames = 6
  with pytest.raises(ValueError, match=r"config.input.pp .*'frames': \[4, 32, 32, 3\].*\[6, 32, "
                                       r"32, 3\].*config.input.num_frames"):
    pipeline.train_dataset(config, B, 0, env["tok"])


def test_tokenizer_is_trained_when_missing_or_explained(env, tmp_path):
  config = _config(env, tokenizer="{workdir}/tok/spm.model")
  with pytest.raises(FileNotFoundError, match=r"tok/spm.model.*python -m videococa.data.tokenizer"):
    pipeline.get_tokenizer(config, str(tmp_path))
  config.input.tokenizer_vocab_size = 100
  tok = pipeline.get_tokenizer(config, str(tmp_path))
  assert tok.path == str(tmp_path / "tok" / "spm.model") and os.listdir(tmp_path / "tok") == [
      "spm.model"]  # Written atomically: no temporary file left.
  assert tok.decode(tok.encode(["a red circle moves left"], 16)) == ["a red circle moves left"]


def test_throughput_counter_logs(monkeypatch):
  """On a controlled clock: once `interval_s` has passed, examples_per_s = the examples yielded
  since the last log / the seconds since it, wait_ms = the mean time spent in the source's next(),
  one log line each time; until then both stay NaN."""
  clock = [100.0]  # Binary fractions: every sum and difference below is exact.
  monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
  logged = []
  log = lambda message, *args: logged.append(message % args)  # noqa: E731
  monkeypatch.setattr(pipeline, "logging", types.SimpleNamespace(info=log))
  sizes, waits = [4, 3, 5, 6, 2], [0.125, 0.25, 0.125, 0.0625, 0.1875]

  def source():  # Each next() blocks for its wait.
    for size, wait in zip(sizes, waits):
      clock[0] += wait
      yield {"frames": np.zeros((size, 1)), "text": np.zeros((size, 7))}

  counter = pipeline.Throughput(interval_s=1.0)
  seen = []
  for batch in counter.wrap(source()):
    seen.append((len(batch["frames"]), counter.examples_per_s, counter.wait_ms))
    clock[0] += 0.375  # The consumer's step.
  # Batch 3 arrives at 101.25 (1.25 s, 4 + 3 + 5 examples, 0.5 s waiting); batch 5 at 102.25
  # (1.0 s after the first log, 6 + 2 examples, 0.25 s waiting).
  first, second = (12 / 1.25, 1e3 * 0.5 / 3), (8 / 1.0, 1e3 * 0.25 / 2)
  nan = (float("nan"),) * 2
  np.testing.assert_equal(seen, [(4, *nan), (3, *nan), (5, *first), (6, *first), (2, *second)])
  assert logged == ["Input pipeline: 9.6 examples/s, 166.7 ms/batch waiting for tf.data.",
                    "Input pipeline: 8.0 examples/s, 125.0 ms/batch waiting for tf.data."]


# ----------------------------------------------------------------------------- Eval.
EVAL_PP = f'sample_frames({T})|decode_video|resize({S})|keep("frames", "id", "captions", "label")'


def test_eval_iterator_pads_masks_and_covers_each_example_once(env, monkeypatch):
  data = dict(env["data"]["video"], split="test")
  assert pipeline.count_examples(data) == 16
  batches = list(pipeline.make_eval_iterator(data, EVAL_PP, 6, num_frames=T))
  assert [b["mask"].sum() for b in batches] == [6, 6, 4]
  last = batches[-1]
  assert last["frames"].shape == (6, T, S, S, 3) and (last["frames"][4:] == 0).all()
  assert last["id"][4:] == ["", ""] and last["captions"][4:] == [[], []]
  assert all(len(c) == 5 for c in last["captions"][:4]) and last["label"].shape == (6,)
  ids = [i for b in batches for i, m in zip(b["id"], b["mask"]) if m]
  assert sorted(ids) == [f"test_{i:06d}" for i in range(16)]
  _assert_same([{"f": b["frames"]} for b in batches],  # Deterministic.
               [{"f": b["frames"]} for b in pipeline.make_eval_iterator(data, EVAL_PP, 6)])

  monkeypatch.setattr(jax, "process_count", lambda: 3)  # Shards of 6, 5, 5 examples.
  per_process = []
  for index in range(3):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    per_process.append(list(pipeline.make_eval_iterator(data, EVAL_PP, 4)))
  assert [len(p) for p in per_process] == [2, 2, 2]  # Same number of steps everywhere.
  ids = [i for p in per_process for b in p for i, m in zip(b["id"], b["mask"]) if m]
  assert sorted(ids) == [f"test_{i:06d}" for i in range(16)]
