"""`shapes_video`: embedded synthetic video-text (and image-text) dataset, generated locally.

Configs:
  video (default): clips `[num_frames, H, W, 3]` (JPEG frames) of 1-2 shapes sharing one motion,
    with several reference captions, the motion label and per-object attributes. Every `test` clip
    has a (colour, motion) or (shape, motion) composition that never occurs in train/validation.
  image: single static frames with captions of colour, size, shape and position, for image CoCa.

Everything comes from the shapes project's scene generator (`videococa.projects.shapes.scenes`)
driven by `np.random.default_rng([seed, split, index])`, so rebuilding gives the same bytes and
each split is seeded independently. No download. README.md next to this file is the TFDS
description; docs/data.md documents the label set, caption templates, splits and sizes. Load it
with `videococa.data.datasets.get_builder('shapes_video/video')` (imports this file by path).
"""
from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from videococa.projects.shapes import scenes as shapes


@dataclasses.dataclass(eq=False)
class ShapesVideoConfig(tfds.core.BuilderConfig):
  """View, sizes and seed of one `shapes_video` config; split sizes are numbers of examples.

  Reduced/custom configs need a name of their own (TFDS rejects a custom config named like a
  predefined one); `videococa.data.datasets.get_builder(..., config_overrides=...)` makes them.
  """
  view: str = "video"  # 'video' (clips with motion captions) or 'image' (static frames).
  num_train: int = 6000
  num_validation: int = 500
  num_test: int = 1000
  num_frames: int = 16  # Ignored by the `image` config (always a single frame).
  height: int = 64
  width: int = 64
  num_captions: int = 5
  jpeg_quality: int = 90
  seed: int = 0


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
  """JPEG bytes of one `[H, W, 3] uint8` frame (PIL; deterministic for a given libjpeg)."""
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for `shapes_video` (configs `video`, `image`)."""

  # Loaded by file path, not as a package: README.md (TFDS's description) lives next to this file.
  pkg_dir_path = pathlib.Path(__file__).resolve().parent
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ShapesVideoConfig(name="video", description="16-frame 64x64 clips with motion captions."),
      ShapesVideoConfig(name="image", view="image", num_train=10000, num_validation=500,
                        num_test=500, description="Single 64x64 frames with position captions."),
  ]
  DEFAULT_CONFIG_NAME = "video"

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.view not in ("video", "image"):
      raise ValueError(f"ShapesVideoConfig.view={cfg.view!r}; expected 'video' or 'image'.")
    def label(names):
      return tfds.features.ClassLabel(names=list(names))

    obj = {"color": label(shapes.COLORS), "shape": label(shapes.SHAPES),
           "size": label(shapes.SIZES)}
    common = {"captions": tfds.features.Sequence(tfds.features.Text()),
              "id": tfds.features.Text()}
    if cfg.view == "image":
      features = {
          "image": tfds.features.Image(shape=(cfg.height, cfg.width, 3), encoding_format="jpeg"),
          "objects": tfds.features.Sequence({**obj, "position": label(shapes.POSITIONS)}),
          **common}
    else:
      features = {
          "video": tfds.features.Video(shape=(None, cfg.height, cfg.width, 3),
                                       encoding_format="jpeg"),
          "label": label(shapes.MOTIONS),
          "objects": tfds.features.Sequence({**obj, "motion": label(shapes.MOTIONS)}),
          **common}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("video", "label") if cfg.view == "video" else None)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

  def _generate_examples(self, split: str, num_examples: int):
    cfg = self.builder_config
    split_index = shapes.SPLITS.index(split)
    for index in range(num_examples):
      rng = np.random.default_rng([cfg.seed, split_index, index])
      key = f"{split}_{index:06d}"
      if cfg.view == "image":
        spec = shapes.sample_image(rng, height=cfg.height, width=cfg.width)
        yield key, {
            "image": _jpeg(shapes.render(spec)[0], cfg.jpeg_quality),
            "captions": shapes.image_captions(spec, rng, cfg.num_captions),
            "objects": [{"color": o.color, "shape": o.shape, "size": o.size,
                         "position": shapes.position_name(o, spec.height, spec.width)}
                        for o in spec.objects],
            "id": key}
      else:
        spec = shapes.sample_clip(rng, split, num_frames=cfg.num_frames, height=cfg.height,
                                  width=cfg.width)
        yield key, {
            "video": [_jpeg(f, cfg.jpeg_quality) for f in shapes.render(spec)],
            "captions": shapes.video_captions(spec, rng, cfg.num_captions),
            "label": spec.motion,
            "objects": [{"color": o.color, "shape": o.shape, "size": o.size, "motion": o.motion}
                        for o in spec.objects],
            "id": key}
