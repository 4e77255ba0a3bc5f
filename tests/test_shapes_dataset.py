"""Tests of the embedded `shapes_video` dataset: generator, captions, TFDS builder and registry."""
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import SHAPES_SIZES
from videococa.projects.shapes import scenes as shapes

H = W = 64


def _specs(split, n, seed=0, **kw):
  rng = np.random.default_rng(seed)
  return [shapes.sample_clip(rng, split, **kw) for _ in range(n)]


def _words(caption, phrases):
  return any(re.search(rf"\b{re.escape(p)}\b", caption) for p in phrases)


def _tracks(frames, color):
  """Per-frame area and (x, y) centroid of the pixels painted `color`: [T], [T, 2]."""
  mask = shapes.object_mask(frames, color)
  area = mask.sum((1, 2))
  yy, xx = np.mgrid[:frames.shape[1], :frames.shape[2]]
  centroid = np.stack([(mask * xx).sum((1, 2)), (mask * yy).sum((1, 2))], -1) / area[:, None]
  return area, centroid


def test_constants():
  assert shapes.MOTIONS == ("left", "right", "up", "down", "grow", "shrink", "still")
  assert len(shapes.MOTION_CLASS_NAMES) == len(shapes.MOTIONS)
  assert len(shapes.COLORS) >= 6 and len(shapes.SHAPES) >= 4 and shapes.SIZES == ("small", "large")
  assert all("{}" in t for t in shapes.MOTION_PROMPT_TEMPLATES)


def test_render_is_deterministic():
  a, b = _specs("train", 3, seed=7), _specs("train", 3, seed=7)
  assert a == b
  for sa, sb in zip(a, b):
    fa = shapes.render(sa)
    assert fa.shape == (16, H, W, 3) and fa.dtype == np.uint8
    np.testing.assert_array_equal(fa, shapes.render(sb))
    assert (shapes.video_captions(sa, np.random.default_rng(1))
            == shapes.video_captions(sb, np.random.default_rng(1)))
  assert _specs("train", 3, seed=8) != a


def test_motion_is_visible_and_objects_stay_inside():
  seen = {m: 0 for m in shapes.MOTIONS}
  for spec in _specs("train", 120, seed=1) + _specs("test", 60, seed=2):
    frames = shapes.render(spec)
    for obj in spec.objects:
      area, c = _tracks(frames, obj.color)
      assert area.min() > 0, "object left the frame or was occluded"
      dx, dy = c[-1] - c[0]
      ratio = area[-1] / area[0]
      m = spec.motion
      seen[m] += 1
      if m in ("left", "right"):
        assert (dx if m == "right" else -dx) > 0.3 * W and abs(dy) < 0.5, (m, dx, dy)
        assert 0.8 < ratio < 1.25
      elif m in ("up", "down"):
        assert (dy if m == "down" else -dy) > 0.3 * H and abs(dx) < 0.5, (m, dx, dy)
        assert 0.8 < ratio < 1.25
      elif m in ("grow", "shrink"):
        assert (ratio if m == "grow" else 1 / ratio) > 3, (m, ratio)
        assert abs(dx) < 1.5 and abs(dy) < 1.5
      else:
        assert np.all(frames == frames[:1])
      for (x, y), s in zip((obj.start, obj.end), obj.scale):
        e = shapes._half_extent(obj.shape, obj.size, s, H, W)
        assert e <= x <= W - e and e <= y <= H - e
  assert min(seen.values()) >= 5, seen


def test_background_is_muted():
  for seed in range(20):
    bg = shapes.render_background(seed, H, W)
    assert bg.min() >= 40 and bg.max() <= 175
    assert np.ptp(bg, axis=-1).max() < 60  # Greyish: channels stay close.


def test_heldout_compositions_split_constraint():
  heldout = set(shapes.HELDOUT_COLOR_MOTION) | set(shapes.HELDOUT_SHAPE_MOTION)
  train = _specs("train", 1500, seed=3) + _specs("validation", 300, seed=4)
  test = _specs("test", 700, seed=5)
  train_objs = [o for s in train for o in s.objects]
  assert not any(shapes.is_heldout(o.color, o.shape, o.motion) for o in train_objs)
  assert all(shapes.is_heldout(s.objects[0].color, s.objects[0].shape, s.motion) for s in test)
  assert all(o.motion == s.motion for s in train + test for o in s.objects)
  # Every attribute alone is seen in training; every held-out pair occurs in test.
  assert {o.color for o in train_objs} == set(shapes.COLORS)
  assert {o.shape for o in train_objs} == set(shapes.SHAPES)
  assert {o.size for o in train_objs} == set(shapes.SIZES)
  assert {s.motion for s in train} == {s.motion for s in test} == set(shapes.MOTIONS)
  test_pairs = {p for s in test for o in s.objects
                for p in ((o.color, s.motion), (o.shape, s.motion))}
  assert heldout <= test_pairs
  assert {len(s.objects) for s in train} == {1, 2}


def test_split_validation():
  with pytest.raises(ValueError, match="split"):
    shapes.sample_clip(np.random.default_rng(0), "dev")


def test_video_captions_mention_objects_and_motion():
  rng = np.random.default_rng(6)
  for spec in _specs("train", 150, seed=6) + _specs("test", 50, seed=7):
    captions = shapes.video_captions(spec, rng)
    assert len(captions) == 5 == len(set(captions))
    for cap in captions:
      assert cap == cap.lower() and len(cap.split()) <= shapes.MAX_CAPTION_WORDS
      assert shapes.mentioned_motions(cap) == {spec.motion}, cap
      for obj in spec.objects:
        assert _words(cap, shapes.COLOR_WORDS[obj.color]), cap
        assert _words(cap, shapes.SHAPE_WORDS[obj.shape]), cap
  assert shapes.mentioned_motions("a small red circle moves to the left") == {"left"}
  assert shapes.mentioned_motions("a red ball slides left") == {"left"}


def test_motion_negatives_swap_only_the_motion():
  rng = np.random.default_rng(8)
  for spec in _specs("train", 100, seed=8):
    for cap in shapes.video_captions(spec, rng):
      negatives = shapes.motion_negatives(cap, spec.motion)
      others = [m for m in shapes.MOTIONS if m != spec.motion]
      assert [shapes.mentioned_motions(n) for n in negatives] == [{m} for m in others], cap
      kept = set(cap.split()) - set(" ".join(w for f in shapes.MOTION_WORDS[spec.motion]
                                             for p in f for w in p.split()).split())
      assert all(kept <= set(n.split()) for n in negatives), (cap, negatives)
  assert shapes.motion_negatives("a red ball slides left", "left")[:2] == [
      "a red ball slides right", "a red ball rises"]  # Same synonym slot.
  assert shapes.motion_negatives("both the box and the disc get bigger", "grow")[-1] == (
      "both the box and the disc do not move")
  with pytest.raises(ValueError, match="no phrase of motion 'up'"):
    shapes.motion_negatives("a red ball slides left", "up")


def test_motion_phrases_are_the_captions_phrase_then_the_swaps():
  rng = np.random.default_rng(9)
  for spec in _specs("train", 50, seed=9):
    for cap in shapes.video_captions(spec, rng):
      phrases = shapes.motion_phrases(cap, spec.motion)
      assert phrases[0] in cap, (cap, phrases)
      others = [m for m in shapes.MOTIONS if m != spec.motion]
      assert ([shapes.mentioned_motions(p) for p in phrases]
              == [{spec.motion}] + [{m} for m in others])
      # Each swap is the phrase that the hard negative of the same motion puts in the caption.
      for phrase, negative in zip(phrases[1:], shapes.motion_negatives(cap, spec.motion)):
        assert negative == cap.replace(phrases[0], phrase, 1), (cap, negative)
  assert shapes.motion_phrases("a red ball slides left", "left")[:3] == [
      "slides left", "slides right", "rises"]  # Same synonym slot and verb form.
  with pytest.raises(ValueError, match="no phrase of motion 'up'"):
    shapes.motion_phrases("a red ball slides left", "up")


def test_static_image_view():
  rng = np.random.default_rng(8)
  for _ in range(150):
    spec = shapes.sample_image(rng)
    frames = shapes.render(spec)
    assert frames.shape == (1, H, W, 3) and spec.num_frames == 1 and spec.motion == "still"
    assert all(o.start == o.end and o.scale == (1.0, 1.0) for o in spec.objects)
    positions = [shapes.position_name(o, H, W) for o in spec.objects]
    assert len(set(positions)) == len(positions)
    for obj in spec.objects:
      assert shapes.object_mask(frames, obj.color).sum() > 0
    for cap in shapes.image_captions(spec, rng):
      assert not shapes.mentioned_motions(cap), cap
      assert len(cap.split()) <= shapes.MAX_CAPTION_WORDS
      for obj, pos in zip(spec.objects, positions):
        assert _words(cap, shapes.COLOR_WORDS[obj.color]), cap
        assert _words(cap, shapes.SHAPE_WORDS[obj.shape]), cap
        assert _words(cap, shapes.POSITION_WORDS[pos]), cap


# ------------------------------------------------------------------------------ TFDS builder.
@pytest.fixture(scope="module")
def built(shapes_tfds):
  return shapes_tfds["data_dir"], shapes_tfds["video"], shapes_tfds["image"]


def _decode_objects(builder, objects):
  feats = builder.info.features["objects"]
  return [{k: feats[k].int2str(int(objects[k][i])) for k in objects}
          for i in range(len(objects["color"]))]


def test_built_video_dataset(built):
  import tensorflow_datasets as tfds
  _, builder, _ = built
  assert builder.builder_config.name == "video_num_test16_num_train64_num_validation16"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 64, "validation": 16, "test": 16}
  for split in ("train", "test"):
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert len(examples) == SHAPES_SIZES[f"num_{split}"]
    for ex in examples:
      assert ex["video"].shape == (16, H, W, 3) and ex["video"].dtype == np.uint8
      assert len(ex["captions"]) == 5 and isinstance(ex["captions"][0], bytes)
      motion = shapes.MOTIONS[ex["label"]]
      objs = _decode_objects(builder, ex["objects"])
      assert all(o["motion"] == motion for o in objs)
      heldout = [shapes.is_heldout(o["color"], o["shape"], o["motion"]) for o in objs]
      assert any(heldout) if split == "test" else not any(heldout)
    # The stored clip is the JPEG of what the generator renders for this (seed, split, index).
    ex = examples[0]
    index = int(ex["id"].decode().rsplit("_", 1)[1])
    rng = np.random.default_rng([0, shapes.SPLITS.index(split), index])
    frames = shapes.render(shapes.sample_clip(rng, split)).astype(np.float32)
    assert np.abs(ex["video"] - frames).mean() < 6


def test_built_image_dataset(built):
  import tensorflow_datasets as tfds
  _, _, builder = built
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train"))))
  assert ex["image"].shape == (H, W, 3) and ex["image"].dtype == np.uint8
  assert len(ex["captions"]) == 5
  for obj in _decode_objects(builder, ex["objects"]):
    assert set(obj) == {"color", "shape", "size", "position"}
    assert any(_words(c.decode(), shapes.POSITION_WORDS[obj["position"]]) for c in ex["captions"])


def test_build_is_deterministic_and_reloadable(built, tmp_path):
  from videococa.data import datasets
  data_dir, builder, _ = built
  again = datasets.ensure_prepared(
      datasets.get_builder("shapes_video/video", str(tmp_path), config_overrides=SHAPES_SIZES))
  files = sorted(p.name for p in pathlib.Path(builder.data_dir).glob("*.tfrecord*"))
  assert files
  for name in files:
    assert (pathlib.Path(builder.data_dir, name).read_bytes()
            == pathlib.Path(again.data_dir, name).read_bytes()), name
  reloaded = datasets.get_builder_from_directory(builder.data_dir)
  assert reloaded.info.splits["test"].num_examples == 16
  assert reloaded.info.features["label"].names == list(shapes.MOTIONS)


def test_registry_errors_and_defaults(monkeypatch):
  from videococa.data import datasets
  with pytest.raises(ValueError, match="shapes_video"):
    datasets.get_builder("no_such_dataset_xyz", "/nonexistent")
  with pytest.raises(ValueError, match="image"):
    datasets.get_builder("shapes_video/bogus", "/nonexistent")
  with pytest.raises(ValueError, match="num_train"):
    datasets.get_builder("shapes_video", "/nonexistent", config_overrides={"num_trian": 1})
  monkeypatch.setenv("VIDEOCOCA_DATA_DIR", "/some/dir")
  assert datasets.default_data_dir() == "/some/dir"
  assert datasets.default_data_dir("/explicit") == "/explicit"
  builder = datasets.get_builder("shapes_video")
  assert builder.builder_config.name == "video" and builder.data_dir.startswith("/some/dir")


def test_generator_does_not_import_tensorflow():
  code = "import sys, videococa.projects.shapes.scenes; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parents[1])
