r"""Throughput of the training input pipeline (video examples/s on this machine's CPUs).

  python -m videococa.projects.shapes.bench_input [--num_batches=40] [--batch_size=32] \
      [--workdir=/tmp/bench]

Builds a reduced `shapes_video` (16-frame 64x64 clips) and a small mp4-ingested dataset (synthetic
320x240, 4 s, 25 fps H.264 clips -> `videococa.data.ingest` with 16 frames per clip and short
side 224) in --workdir (default: a temporary folder), then times `pipeline.make_train_iterator`
(random-segment sampling, crop, caption choice and SentencePiece tokenization included) after a
few warm-up batches, and prints one row per setting.
"""
from __future__ import annotations

import csv
import os
import tempfile
import time

from absl import app, flags, logging
import av
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from videococa.data import datasets, ingest, pipeline, tokenizer as tokenizer_lib

_NUM_BATCHES = flags.DEFINE_integer("num_batches", 40, "Timed batches per setting.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches first (graph building, buffers).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 512, "shapes_video training clips to build.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 32, "Synthetic mp4 files to ingest.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where datasets go (default: a temp folder).")

MAX_LEN = 32  # Model text length; the pipeline produces MAX_LEN + 1 tokens.
_TRAIN_TAIL = 'choose_caption|tokenize({})|keep("frames", "text")'.format(MAX_LEN + 1)


def write_synthetic_mp4s(folder: str, num: int, width: int = 320, height: int = 240,
                         seconds: float = 4.0, fps: int = 25) -> list[str]:
  """Writes `num` H.264 (else MPEG-4) clips of a moving square on a gradient; returns names."""
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  yy, xx = np.mgrid[:height, :width]
  names = []
  for i in range(num):
    rng = np.random.default_rng(i)
    base = (np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40 * (i % 6))], -1)
            .astype(np.uint8))
    color, speed = rng.integers(0, 256, 3, dtype=np.uint8), rng.uniform(-4, 4, 2)
    name = f"clip{i:03d}.mp4"
    with av.open(os.path.join(folder, name), "w") as container:
      stream = container.add_stream(codec, rate=fps)
      stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
      for t in range(int(seconds * fps)):
        frame = base.copy()
        x, y = (np.array([width, height]) // 2 + speed * t).astype(int) % [width - 40, height - 40]
        frame[y:y + 40, x:x + 40] = color
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
      container.mux(stream.encode())
    names.append(name)
  return names


def ingested_dataset(root: str, num_videos: int) -> str:
  """Prepared TFDS folder of `num_videos` synthetic mp4s (16 frames each, short side 224)."""
  out = os.path.join(root, "mp4_ingested")
  if os.path.exists(os.path.join(out, "dataset_info.json")):
    return out
  videos = os.path.join(root, "mp4")
  os.makedirs(videos, exist_ok=True)
  annotations = os.path.join(root, "mp4.csv")
  with open(annotations, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["video", "caption"])
    for i, name in enumerate(write_synthetic_mp4s(videos, num_videos)):
      writer.writerow([name, f"a coloured square number {i} moves over a gradient"])
  ingest.ingest_videos(videos, annotations, out, name="mp4_bench", num_frames=16,
                       short_side=224, workers=2)
  return out


def time_pipeline(config: ml_collections.ConfigDict, batch_size: int, num_batches: int,
                  warmup: int) -> float:
  """Examples/s of `pipeline.make_train_iterator` over `num_batches` after `warmup` batches."""
  batches = pipeline.make_train_iterator(config, batch_size, 0, workdir="")
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches * batch_size / (time.perf_counter() - start)


def _config(data: dict, pp: str, num_frames: int, size: int, tokenizer: str, cache=False):
  return ml_collections.ConfigDict(dict(
      seed=0, model=dict(max_len=MAX_LEN, vocab_size=32_000, vision=dict(image_size=size)),
      input=dict(data=data, pp=pp, num_frames=num_frames, tokenizer=tokenizer,
                 shuffle_buffer=1000, cache=cache)))


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)
  tfds.disable_progress_bar()
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="videococa_bench_")
  shapes = dict(name="shapes_video/video", split="train", data_dir=root,
                config_overrides={"num_train": _NUM_TRAIN.value, "num_validation": 0,
                                  "num_test": 0})
  builder = datasets.ensure_prepared(datasets.get_builder(
      shapes["name"], root, shapes["config_overrides"]))
  mp4 = dict(dir=ingested_dataset(root, _NUM_VIDEOS.value), split="train")
  tok = os.path.join(root, "tokenizer.model")
  if not os.path.exists(tok):
    captions = list(tokenizer_lib.captions_from_builder(builder, "train"))
    os.replace(tokenizer_lib.train(captions, 1000, tok[:-6] + ".tmp"), tok)

  def crop(size, scale=(0.5, 1.0)):
    return f"random_resized_crop({size}, scale={scale})"

  seg = 'sample_frames({}, mode="random_segment")'
  rows = [
      ("shapes_video 16x64x64 -> 8x64x64", shapes, 8, 64,
       f"{seg.format(8)}|decode_video|{crop(64)}|{_TRAIN_TAIL}", False),
      ("  same, decode all 16 then sample", shapes, 8, 64,
       f"decode_video|{seg.format(8)}|{crop(64)}|{_TRAIN_TAIL}", False),
      ("  same, cache=True", shapes, 8, 64,
       f"{seg.format(8)}|decode_video|{crop(64)}|{_TRAIN_TAIL}", True),
      ("shapes_video 16x64x64 -> 16x64x64", shapes, 16, 64,
       f"{seg.format(16)}|decode_video|{crop(64)}|{_TRAIN_TAIL}", False),
      ("mp4 16x224x298 -> 8x224x224", mp4, 8, 224,
       f"{seg.format(8)}|decode_video|{crop(224, (0.08, 1.0))}|{_TRAIN_TAIL}", False),
      ("  same, decode all 16 then sample", mp4, 8, 224,
       f"decode_video|{seg.format(8)}|{crop(224, (0.08, 1.0))}|{_TRAIN_TAIL}", False),
  ]
  print(f"\nInput pipeline throughput: {os.cpu_count()} CPUs, batch {_BATCH_SIZE.value}, "
        f"{_NUM_BATCHES.value} timed batches after {_WARMUP.value} warm-up.")
  print(f"{'setting':<40} {'examples/s':>11}  pp")
  for name, data, num_frames, size, pp, cache in rows:
    warmup = _WARMUP.value  # With a cache: plus one epoch, which fills it.
    if cache:
      warmup += -(-pipeline.count_examples(data) // _BATCH_SIZE.value)
    rate = time_pipeline(_config(data, pp, num_frames, size, tok, cache), _BATCH_SIZE.value,
                         _NUM_BATCHES.value, warmup)
    print(f"{name:<40} {rate:>11.1f}  {pp}", flush=True)


if __name__ == "__main__":
  app.run(main)
