"""Tests of real-video ingestion on tiny videos written with PyAV (several codecs and containers).

Frame i of a test video is a flat grey of level 10 * i (rate 10 fps: level = 100 * time in s), so
the decoded level tells which frame (and time) was picked.
"""
import csv
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from videococa.data import ingest

# (container suffix, encoder, width, height, pixel format): odd sizes where the codec allows them.
CODECS = [
    ("mp4", "libx264", 48, 32, "yuv420p"),
    ("mp4", "mpeg4", 48, 32, "yuv420p"),
    ("webm", "libvpx", 97, 61, "yuv420p"),
    ("webm", "libvpx-vp9", 97, 61, "yuv420p"),
    ("avi", "mjpeg", 97, 61, "yuvj420p"),
    ("avi", "mpeg4", 48, 32, "yuv420p"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_encoder(name):
  try:
    av.codec.Codec(name, "w")
  except Exception:  # pylint: disable=broad-except  # Unknown to this FFmpeg build.
    return False
  return True


def write_video(path, codec="mpeg4", width=48, height=32, frames=20, rate=10, pix_fmt="yuv420p",
                level=lambda i: 10 * i):
  """Writes a video whose frame i is a flat grey of `level(i)`."""
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.bit_rate = 2_000_000  # Plenty for these frames: decoded levels stay within a few.
    for i in range(frames):
      rgb = np.full((height, width, 3), level(i), np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_audio_only(path):
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return path


def truncate(src, dst):
  data = open(src, "rb").read()
  with open(dst, "wb") as f:
    f.write(data[:len(data) // 2])
  return dst


def levels(frames):
  """int [T]: the mean grey level of each frame."""
  return np.round(frames.reshape(len(frames), -1).mean(axis=1)).astype(int)


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
    writer.writeheader()
    writer.writerows(rows)
  return path


@pytest.mark.parametrize("suffix,codec,width,height,pix_fmt", CODECS)
def test_decode_video_codecs_and_sizes(tmp_path, suffix, codec, width, height, pix_fmt):
  if not _has_encoder(codec):
    pytest.skip(f"this FFmpeg build has no {codec} encoder")
  path = write_video(tmp_path / f"v.{suffix}", codec, width, height, pix_fmt=pix_fmt)
  frames = ingest.decode_video(path, num_frames=4)
  assert frames.dtype == np.uint8 and frames.shape == (4, height, width, 3)
  # 2 s; the frames nearest to the centres 0.25, 0.75, 1.25, 1.75 s (ties either way).
  np.testing.assert_allclose(levels(frames), [25, 75, 125, 175], atol=8)
  small = ingest.decode_video(path, num_frames=2, short_side=16)
  assert small.shape == (2, 16, round(16 * width / height), 3)


def test_decode_video_segments_and_fps(tmp_path):
  path = write_video(tmp_path / "v.mp4", frames=25)  # 2.5 s, levels 0..240.
  np.testing.assert_allclose(levels(ingest.decode_video(path, start=1.0, end=1.5)),
                             [100, 110, 120, 130, 140], atol=3)
  np.testing.assert_allclose(levels(ingest.decode_video(path, fps=2, start=0.5, end=2.0)),
                             [50, 100, 150], atol=3)
  np.testing.assert_allclose(levels(ingest.decode_video(path, num_frames=5, start=1.0, end=2.0)),
                             [110, 130, 150, 170, 190], atol=3)
  # Faster than the video: frames repeat; past the end: clipped to the last frame's end.
  np.testing.assert_allclose(levels(ingest.decode_video(path, fps=20, start=2.2)),
                             [220, 220, 230, 230, 240, 240], atol=3)


def test_decode_video_long_keeps_few_frames_but_samples_uniformly(tmp_path):
  path = write_video(tmp_path / "v.mp4", frames=240, rate=120, level=lambda i: i)  # 2 s.
  frames = ingest.decode_video(path, num_frames=4)
  np.testing.assert_allclose(levels(frames), [30, 90, 150, 210], atol=6)


def test_decode_video_one_frame_is_repeated(tmp_path):
  path = write_video(tmp_path / "one.mp4", "libx264", frames=1, level=lambda i: 200)
  frames = ingest.decode_video(path, num_frames=3)
  assert frames.shape == (3, 32, 48, 3)
  np.testing.assert_allclose(levels(frames), [200] * 3, atol=3)


def _bad_files(tmp_path):
  """{file: expected start of the DecodeError reason}."""
  good_mp4 = write_video(tmp_path / "good.mp4", "libx264")
  good_webm = write_video(tmp_path / "good.webm", "libvpx", 97, 61)
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "garbage.avi").write_bytes(np.random.RandomState(0).bytes(5000))
  return {
      tmp_path / "absent.mp4": "missing file",
      tmp_path / "empty.mp4": "empty file",
      tmp_path / "garbage.avi": ("cannot open", "decoding failed", "no video stream"),
      truncate(good_mp4, tmp_path / "cut.mp4"): ("cannot open", "no video stream"),
      truncate(good_webm, tmp_path / "cut.webm"): "truncated",
      write_audio_only(tmp_path / "audio.wav"): "no video stream",
  }


def test_decode_video_bad_files_raise_decode_error_with_reason(tmp_path):
  for path, reason in _bad_files(tmp_path).items():
    with pytest.raises(ingest.DecodeError) as e:
      ingest.decode_video(path, num_frames=2)
    assert str(e.value).startswith(reason), (path, str(e.value))
  with pytest.raises(ingest.DecodeError, match="no frame in the segment"):
    ingest.decode_video(tmp_path / "good.mp4", start=5.0)


def test_read_annotations_groups_captions_and_names_bad_rows(tmp_path):
  write_video(tmp_path / "a.mp4")
  ann = write_csv(tmp_path / "ann.csv", [
      {"video": "a.mp4", "caption": "one", "label": "x"},
      {"video": "a.mp4", "caption": "two", "label": "x"},
      {"video": "a.mp4", "caption": "seg", "start": "0.5", "end": "1"},
      {"video": "b", "captions": '["b1", "b2"]'},
      {"video": "c.mp4", "captions": "c1|c2", "split": "test"},
  ])
  entries = ingest.read_annotations(ann, tmp_path)
  assert [(e.id, e.captions, e.label, e.split) for e in entries] == [
      ("a.mp4", ("one", "two"), "x", "train"), ("a.mp4@0.5-1", ("seg",), "", "train"),
      ("b", ("b1", "b2"), "", "train"), ("c.mp4", ("c1", "c2"), "", "test")]
  assert (entries[1].start, entries[1].end) == (0.5, 1.0)
  assert entries[0].path == os.path.join(tmp_path, "a.mp4")

  bad = write_csv(tmp_path / "bad.csv", [{"video": "a.mp4", "caption": "ok"},
                                         {"video": "", "caption": "no path"}])
  with pytest.raises(ingest.AnnotationError, match=r"bad\.csv, row 3: missing column 'video'"):
    ingest.read_annotations(bad, tmp_path)
  bad = write_csv(tmp_path / "bad.csv", [{"video": "a.mp4", "comment": "no caption"}])
  with pytest.raises(ingest.AnnotationError, match=r"row 2: missing column 'caption' or 'captions'"):
    ingest.read_annotations(bad, tmp_path)
  bad = write_csv(tmp_path / "bad.csv", [{"video": "a.mp4", "caption": "c", "start": "soon"}])
  with pytest.raises(ingest.AnnotationError, match=r"row 2: column 'start' should be seconds"):
    ingest.read_annotations(bad, tmp_path)


def test_read_annotations_msrvtt_and_vatex_json(tmp_path):
  write_video(tmp_path / "video0.mp4")
  msrvtt = tmp_path / "msrvtt.json"
  msrvtt.write_text(json.dumps({
      "videos": [{"video_id": "video0", "category": 3, "split": "validate",
                  "start time": 137.72, "end time": 149.44}],
      "sentences": [{"video_id": "video0", "caption": "a"}, {"video_id": "video0", "caption": "b"}],
  }))
  [entry] = ingest.read_annotations(msrvtt, tmp_path)
  assert (entry.id, entry.path, entry.captions, entry.label, entry.split, entry.start) == (
      "video0", os.path.join(tmp_path, "video0.mp4"), ("a", "b"), "3", "validate", None)
  vatex = tmp_path / "vatex.json"
  vatex.write_text(json.dumps([{"videoID": "video0", "enCap": ["x", "y"], "chCap": ["z"]}]))
  [entry] = ingest.read_annotations(vatex, tmp_path)
  assert (entry.id, entry.captions) == ("video0", ("x", "y"))


def test_read_annotations_coco_json_and_file_errors(tmp_path):
  coco = tmp_path / "captions.json"
  coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.jpg"}],
                              "annotations": [{"image_id": 7, "caption": "x"},
                                              {"image_id": 7, "caption": "y"}]}))
  [entry] = ingest.read_annotations(coco, tmp_path, kind="image")
  assert (entry.id, entry.captions) == ("a.jpg", ("x", "y"))
  with pytest.raises(ingest.AnnotationError, match=r"absent\.csv: no such annotation file"):
    ingest.read_annotations(tmp_path / "absent.csv", tmp_path)
  (tmp_path / "broken.json").write_text("[{")
  with pytest.raises(ingest.AnnotationError, match=r"broken\.json: not valid JSON"):
    ingest.read_annotations(tmp_path / "broken.json", tmp_path)
  ann = write_csv(tmp_path / "ann.csv", [{"video": "a.mp4", "caption": "c"}])
  with pytest.raises(ValueError, match="Invalid dataset name 'my-videos'"):
    ingest.ingest_videos(tmp_path, ann, tmp_path / "out", "my-videos", num_frames=2)


def test_ingest_videos_skips_and_reports_bad_files(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  videos = tmp_path / "videos"
  videos.mkdir()
  rows, good = [], []
  for suffix, codec, width, height, pix_fmt in CODECS:
    if _has_encoder(codec):
      name = f"{codec}.{suffix}"
      write_video(videos / name, codec, width, height, pix_fmt=pix_fmt)
      rows += [{"video": name, "caption": f"{name} 1", "label": suffix},
               {"video": name, "caption": f"{name} 2", "label": suffix}]
      good.append(name)
  write_video(videos / "one.mp4", frames=1)
  rows.append({"video": "one.mp4", "caption": "a single frame", "label": "mp4"})
  rows.append({"video": "mpeg4.mp4", "caption": "a segment", "start": "1", "end": "1.6"})
  good += ["one.mp4", "mpeg4.mp4@1-1.6"]
  bad = _bad_files(videos)
  rows += [{"video": os.path.basename(p), "caption": "bad"} for p in bad]
  ann = write_csv(tmp_path / "ann.csv", rows)
  out = tmp_path / "out"

  report = ingest.ingest_videos(videos, ann, out, "myvideos", num_frames=3, short_side=20)

  assert report.written == {"train": len(good)}
  builder = tfds.builder_from_directory(os.fspath(out))
  examples = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
  assert sorted(examples) == sorted(good)
  for ex in examples.values():
    assert ex["video"].shape[0] == 3 and min(ex["video"].shape[1:3]) == 20
  whole, segment = examples["mpeg4.mp4"], examples["mpeg4.mp4@1-1.6"]
  assert [c.decode() for c in whole["captions"]] == ["mpeg4.mp4 1", "mpeg4.mp4 2"]
  label_names = builder.info.features["label_id"].names
  assert whole["label"] == b"mp4" and label_names[whole["label_id"]] == "mp4"
  assert segment["label"] == b"" and segment["label_id"] == -1
  np.testing.assert_allclose(levels(segment["video"]), [110, 130, 150], atol=4)

  saved = json.loads((out / ingest.REPORT_FILENAME).read_text())
  assert saved["num_skipped"] == len(bad) and saved["num_written"] == len(good)
  reasons = {os.path.basename(s["path"]): s["reason"] for s in saved["skipped"]}
  assert set(reasons) == {os.path.basename(p) for p in bad}
  assert reasons["absent.mp4"] == "missing file" and reasons["cut.webm"].startswith("truncated")
  assert "skipped 6" in report.summary()


def test_ingest_images(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images = tmp_path / "images"
  images.mkdir()
  Image.new("RGB", (97, 61), (200, 10, 10)).save(images / "red.png")
  Image.new("L", (40, 30), 128).save(images / "grey.jpg")
  Image.new("RGB", (64, 64)).save(images / "whole.jpg")
  truncate(images / "whole.jpg", images / "cut.jpg")
  (images / "garbage.jpg").write_bytes(b"not an image" * 10)
  ann = write_csv(tmp_path / "ann.csv", [
      {"image": "red.png", "caption": "red"}, {"image": "red.png", "caption": "scarlet"},
      {"image": "grey.jpg", "captions": "grey|gray"},
      *({"image": name, "caption": "bad"} for name in ("cut.jpg", "garbage.jpg", "absent.png")),
  ])
  report = ingest.ingest_images(images, ann, tmp_path / "out", "myimages", short_side=16)
  assert report.written == {"train": 2}
  assert sorted(os.path.basename(s["path"]) for s in report.skipped) == [
      "absent.png", "cut.jpg", "garbage.jpg"]
  builder = tfds.builder_from_directory(os.fspath(tmp_path / "out"))
  examples = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
  assert examples["red.png"]["image"].shape == (16, 25, 3)
  np.testing.assert_allclose(examples["red.png"]["image"][8, 12], [200, 10, 10], atol=8)
  assert [c.decode() for c in examples["red.png"]["captions"]] == ["red", "scarlet"]
  assert examples["grey.jpg"]["image"].shape == (16, 21, 3)
  assert [c.decode() for c in examples["grey.jpg"]["captions"]] == ["grey", "gray"]


def test_image_class_folders_and_labels(tmp_path):
  """ImageNet-style class folders (no annotations) give label / label_id and class_names.txt in
  label_id order; an image CSV may give labels too, and MSR-VTT's `sentence` is a caption."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images = tmp_path / "val"
  for label, colour in (("n02", (0, 200, 0)), ("n01", (200, 0, 0))):
    (images / label).mkdir(parents=True)
    for i in range(2):
      Image.new("RGB", (20, 10), colour).save(images / label / f"{i}.jpg")
  (images / "n01" / ".hidden").write_bytes(b"")
  report = ingest.ingest_images(images, None, tmp_path / "out", "imagenet", split="validation")
  assert report.written == {"validation": 4}
  assert (tmp_path / "out" / "class_names.txt").read_text() == "n01\nn02\n"
  builder = tfds.builder_from_directory(os.fspath(tmp_path / "out"))
  examples = {ex["id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset("validation"))}
  assert sorted(examples) == ["n01/0.jpg", "n01/1.jpg", "n02/0.jpg", "n02/1.jpg"]
  for name, example in examples.items():
    assert example["label"].decode() == name[:3]
    assert example["label_id"] == int(name[2]) - 1
    assert np.argmax(example["image"][5, 10]) == (0 if name.startswith("n01") else 1)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ingest.AnnotationError, match="no class folders"):
    ingest.ingest_images(tmp_path / "empty", None, tmp_path / "out2", "x")
  ann = write_csv(tmp_path / "ann.csv", [{"image": "n01/0.jpg", "label": "cat"},
                                         {"image": "n02/0.jpg", "sentence": "a green image"}])
  entries = ingest.read_annotations(ann, images, "image")
  assert [(e.label, e.captions) for e in entries] == [("cat", ()), ("", ("a green image",))]


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
  return subprocess.run([sys.executable, "-m", "videococa.data.ingest", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_json_splits_fps_with_workers(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  videos = tmp_path / "videos"
  videos.mkdir()
  for i in range(3):
    write_video(videos / f"video{i}.webm", "libvpx", 33, 21)
  (videos / "video3.mp4").write_bytes(b"")
  ann = tmp_path / "ann.json"
  ann.write_text(json.dumps([
      {"video": "video0", "caption": "zero", "split": "test"},
      {"video": "video1", "captions": ["one", "uno"]},
      {"video": "video2.webm", "caption": "two", "start": 0.5},
      {"video": "video3", "caption": "empty"},
  ]))
  result = _cli("video", f"--videos={videos}", f"--annotations={ann}", f"--out={tmp_path / 'out'}",
                "--name=tiny", "--fps=4", "--workers=2")
  assert result.returncode == 0, result.stderr
  assert "wrote 3 examples (test: 1, train: 2), skipped 1" in result.stdout
  builder = tfds.builder_from_directory(os.fspath(tmp_path / "out"))
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 2, "test": 1}
  lengths = {ex["id"].decode(): len(ex["video"])
             for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
  assert lengths == {"video1": 8, "video2.webm@0.5-": 6}


def test_cli_exits_2_when_every_video_is_bad(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  ann = write_csv(tmp_path / "ann.csv", [{"video": "empty.mp4", "caption": "c"},
                                         {"video": "absent.mp4", "caption": "c"}])
  result = _cli("video", f"--videos={tmp_path}", f"--annotations={ann}",
                f"--out={tmp_path / 'out'}", "--name=none", "--num_frames=2")
  assert result.returncode == 2, result.stderr
  assert f"None of the 2 entries of {ann} could be read" in result.stderr
  saved = json.loads((tmp_path / "out" / ingest.REPORT_FILENAME).read_text())
  assert sorted(s["reason"] for s in saved["skipped"]) == ["empty file (0 bytes)", "missing file"]
  assert not (tmp_path / "out" / "dataset_info.json").exists()


def test_decoding_does_not_import_tensorflow():
  code = ("import sys; from videococa.data import ingest; assert 'tensorflow' not in sys.modules; "
          "assert 'tensorflow_datasets' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
