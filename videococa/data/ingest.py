r"""Ingests real videos (or images) with captions into the prepared TFDS format of `shapes_video`.

Input: a folder of media files plus an annotation file, in the shape of MSR-VTT, VATEX or Kinetics:

  * CSV with a header: `video` (path relative to the folder), `caption` (one per row; rows of the
    same video are grouped) or `captions` (a JSON list or '|'-separated), optional `label`,
    `start` / `end` (seconds into the file) and `split`;
  * JSON: a list of objects with the same keys (VATEX's `videoID` / `enCap` are understood), or
    MSR-VTT's `{"videos": [{"video_id", "category", "split"}], "sentences": [{"video_id",
    "caption"}]}`; for images, COCO's `{"images": [...], "annotations": [...]}`.

A path without an extension that does not exist (MSR-VTT `video0`, VATEX ids) is matched by stem.
Every entry needs a caption or a label; a bad entry stops the build with an
error naming the file, the row and the column, before anything is decoded.

Output: a prepared TFDS dataset directory, read with `tfds.builder_from_directory(out_dir)`
(with --out=DATA_DIR/NAME/1.0.0, also `tfds.load(NAME, data_dir=DATA_DIR)`):

  video:    Video (T, H, W, 3) uint8, JPEG frames; T = --num_frames, or one frame per 1/--fps s
            (neither: every frame).
  captions: Sequence(Text).
  label:    Text ('' without one); plus `label_id`: ClassLabel (sorted label names, -1 without
            one) when the annotations have labels.
  id:       Text: the annotation's path, plus '@start-end' for a segment.
Images: `image` (H, W, 3) uint8 JPEG, `captions`, `label` (+ `label_id`), `id`. Without
--annotations, `image` reads ImageNet-style class folders (DIR/<class>/<file>: label = <class>).
With labels, OUT_DIR/class_names.txt lists the label names in `label_id` order.

Missing, empty, corrupt, truncated or undecodable files are skipped; each is listed with its reason
in OUT_DIR/ingest_report.json and counted in a one-line summary. If none can be read, the command
exits with status 2 (as for every bad input: one `error: ...` line). Splits come from the `split`
column, else --split.

  python -m videococa.data.ingest video --videos=DIR --annotations=ann.csv --out=OUT --name=msrvtt \
      [--split=train] [--num_frames=8 | --fps=2] [--short_side=224] [--jpeg_quality=90] [--workers=4]
  python -m videococa.data.ingest image --images=DIR --annotations=ann.csv --out=OUT --name=coco
  python -m videococa.data.ingest image --images=IMAGENET/val --split=validation --out=OUT \
      --name=imagenet  # class folders

`decode_video` is the decoder used here, reusable on its own (e.g. to benchmark decoding).
This module imports TensorFlow only to write the dataset, so decoding workers stay light.
"""
import collections
import contextlib
import csv
import dataclasses
import functools
import io
import json
import multiprocessing
import os
import pickle
import re
import shutil
from typing import Any, Iterable, Iterator

import av
import numpy as np
from PIL import Image, ImageOps
import tqdm

from videococa import cli, errors

VERSION = "1.0.0"
REPORT_FILENAME = "ingest_report.json"
# The label names in `label_id` order, one per line (written when the annotations have labels):
# the class names of zero-shot classification (edit them into readable names if need be).
CLASS_NAMES_FILENAME = "class_names.txt"
# Keys other annotation formats use for ours (VATEX: videoID / enCap; MSR-VTT: video_id, and
# `sentence` in the JSFusion 1k-A test CSV).
_KEY_ALIASES = {"videoID": "video", "video_id": "video", "enCap": "captions",
                "sentence": "caption"}
# A file whose frames end more than max(this many frames, this fraction of the duration) before
# its header says (or before the segment end) is reported as truncated.
_TRUNCATION_TOLERANCE_FRAMES = 2
_TRUNCATION_TOLERANCE_FRAC = 0.05
_EPS_S = 1e-6  # Frame times are floats (pts * time_base): compare them with this slack.


class DecodeError(Exception):
  """A media file that cannot be used; the message is the reason written to the report."""


class AnnotationError(errors.UserError):
  """A malformed annotation file or entry; the message names the file, the row and the column."""


class NoUsableInputs(errors.UserError, RuntimeError):
  """Every entry of an annotation file was skipped (an empty or all-corrupt input)."""


# ---------------------------------------------------------------------------------------------
# Decoding.


def decode_video(path, num_frames=None, fps=None, start=None, end=None, short_side=None):
  """Decodes RGB frames of a video file, or of its segment [start, end), with PyAV.

  Args:
    path: the video file.
    num_frames: if set, this many frames: the ones nearest to the centres of `num_frames` equal
      parts of the segment (a shorter segment repeats frames). Memory stays O(num_frames) frames.
    fps: if set, the frame shown at each of start, start + 1/fps, ... before the segment's end.
      At most one of `num_frames` and `fps`; with neither, every frame of the segment.
    start: segment start in seconds from the beginning of the video (default: 0).
    end: segment end in seconds (default: the end of the video; later values are clipped).
    short_side: if set, frames are resized (bilinear, with PIL) so that min(H, W) == short_side.

  Returns:
    uint8 [T, H, W, 3] RGB frames.

  Raises:
    DecodeError: the file is missing, empty, unreadable, has no video stream, has no decodable
      frame in the segment, fails to decode, or is truncated (ends well before its header says).
  """
  if num_frames is not None and fps is not None:
    raise ValueError(f"Give num_frames or fps, not both (got {num_frames} and {fps}).")
  if start is not None and end is not None and end <= start:
    raise ValueError(f"Segment end {end} s must be after its start {start} s.")
  _check_file(path)
  try:
    container = av.open(os.fspath(path))
  except av.FFmpegError as e:
    raise DecodeError(f"cannot open: {e.strerror or e}") from e
  with container:
    if not container.streams.video:
      raise DecodeError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if num_frames is not None:
      times, frames, seg_end = _reservoir(_segment(container, stream, start, end), 8 * num_frames)
      picked = [frames[i] for i in _nearest(times, _centres(times[0], seg_end, num_frames))]
    elif fps is not None:
      picked = _at_fps(_segment(container, stream, start, end), start or 0.0, fps, end)
    else:
      picked = [frame for _, frame, _ in _segment(container, stream, start, end)]
  converted = {}  # A frame picked several times is converted once.
  for frame in picked:
    if id(frame) not in converted:
      converted[id(frame)] = _to_rgb(frame, short_side)
  return np.stack([converted[id(frame)] for frame in picked])


def _check_file(path):
  if not os.path.exists(path):
    raise DecodeError("missing file")
  if os.path.getsize(path) == 0:
    raise DecodeError("empty file (0 bytes)")


def _segment(container, stream, start, end) -> Iterator[tuple[float, Any, float]]:
  """Yields (time s, av.VideoFrame, duration s) of the frames in [start, end), in order.

  Raises DecodeError when there is no such frame, on a decoding error, or when the stream ends
  before its header duration (within a tolerance) and before `end`.
  """
  base = float(stream.time_base)
  offset = (stream.start_time or 0) * base  # Frame times are reported from the file's start.
  step = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / 30
  if start:
    with contextlib.suppress(av.FFmpegError):  # Unseekable: decode from the beginning instead.
      container.seek(int((start + offset) / base), stream=stream)
  count, last = 0, None
  try:
    for frame in container.decode(stream):
      if frame.pts is not None:
        t = frame.pts * base - offset
      else:  # No timestamp (some raw streams): one frame after the previous one.
        t = 0.0 if last is None else last + step
      last = t
      if start is not None and t < start - _EPS_S:
        continue
      if end is not None and t >= end - _EPS_S:
        break
      count += 1
      yield t, frame, step
    else:  # The stream ended before `end`.
      if last is None:
        raise DecodeError("no decodable frame")
      _check_not_truncated(container, stream, last + step, step, end)
  except av.FFmpegError as e:
    raise DecodeError(f"decoding failed: {e.strerror or e} (after {count} frames)") from e
  if not count:
    raise DecodeError(f"no frame in the segment: [{start or 0}, {end or 'end'}) s, the video "
                      f"ends at {last + step:.2f} s")


def _check_not_truncated(container, stream, decoded, step, end):
  """Raises DecodeError if frames ending at `decoded` s stop well short of the header or `end`."""
  if stream.duration:
    expected = float(stream.duration * stream.time_base)
  elif container.duration:
    expected = container.duration / av.time_base
  else:
    return
  if end is not None:
    expected = min(expected, end)
  tolerance = max(_TRUNCATION_TOLERANCE_FRAMES * step, _TRUNCATION_TOLERANCE_FRAC * expected)
  if expected - decoded > tolerance:
    raise DecodeError(f"truncated: frames end at {decoded:.2f} s, expected until {expected:.2f} s")


def _reservoir(segment, capacity):
  """Keeps every k-th frame, doubling k whenever `capacity` frames are held.

  Returns (times, frames, segment end s) of >= capacity / 2 evenly spaced frames (or all of them).
  """
  times, frames, stride, t, step = [], [], 1, 0.0, 0.0
  for i, (t, frame, step) in enumerate(segment):
    if i % stride == 0:
      times.append(t)
      frames.append(frame)
      if len(frames) == capacity:
        times, frames, stride = times[::2], frames[::2], 2 * stride
  return np.asarray(times), frames, t + step


def _centres(start, end, n):
  """float [n]: the centres of n equal parts of [start, end)."""
  return start + (np.arange(n) + 0.5) * (end - start) / n


def _nearest(times, targets):
  """int [len(targets)]: index of the entry of `times` nearest to each target."""
  return np.abs(np.subtract.outer(times, targets)).argmin(axis=0)


def _at_fps(segment, start, fps, end):
  """The frames shown at start, start + 1/fps, ... (before `end` or the last frame's end)."""
  picked, target, shown, t, step = [], start, None, start, 0.0
  for t, frame, step in segment:
    while target < t - _EPS_S:
      picked.append(frame if shown is None else shown)  # Before the first frame: the first.
      target = start + len(picked) / fps
    shown = frame
  stop = t + step if end is None else min(end, t + step)
  while target < stop - _EPS_S:
    picked.append(shown)
    target = start + len(picked) / fps
  return picked


def _to_rgb(frame, short_side):
  """uint8 [H, W, 3] from an av.VideoFrame, resized so that min(H, W) == short_side."""
  rgb = frame.to_ndarray(format="rgb24")
  if short_side is None:
    return rgb
  return np.asarray(resize_short_side(Image.fromarray(rgb), short_side))


def resize_short_side(image, short_side):
  """Resizes a PIL image (bilinear) so that its short side is `short_side`; None keeps it."""
  if short_side is None:
    return image
  w, h = image.size
  scale = short_side / min(w, h)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return image if size == (w, h) else image.resize(size, Image.BILINEAR)


def encode_jpeg(image, quality):
  """JPEG bytes of a uint8 [H, W, 3] array or PIL image."""
  buf = io.BytesIO()
  image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
  image.save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def load_image(path, short_side=None):
  """uint8 [H, W, 3] RGB of an image file (EXIF orientation applied); raises DecodeError."""
  _check_file(path)
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image).convert("RGB")
  except (OSError, SyntaxError, ValueError) as e:  # What PIL raises for unreadable images.
    raise DecodeError(f"cannot read image: {e}") from e
  return np.asarray(resize_short_side(image, short_side))


# ---------------------------------------------------------------------------------------------
# Annotations.


@dataclasses.dataclass(frozen=True)
class Entry:
  """One example to ingest: a media file or a segment of it, with all its captions."""
  id: str
  path: str  # Absolute.
  captions: tuple[str, ...]
  label: str = ""
  start: float | None = None
  end: float | None = None
  split: str = "train"


def read_annotations(path, media_dir, kind="video", split="train"):
  """Parses a CSV or JSON annotation file into entries, grouping the rows of the same segment.

  Args:
    path: the annotation file (.csv or .json).
    media_dir: the folder the media paths in it are relative to.
    kind: 'video' or 'image': the name of the path column; images take no segment.
    split: the split of rows without a `split` column.

  Returns:
    list of Entry, in order of first appearance.

  Raises:
    AnnotationError: naming the file, the row and the column at fault.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AnnotationError(f"{path}: no such annotation file.")
  rows = _json_rows(path, kind) if path.endswith(".json") else _csv_rows(path)
  groups = {}
  for where, row in rows:
    entry = _entry(row, where, kind, media_dir, split)
    key = (entry.split, entry.id)
    if key not in groups:
      groups[key] = entry
      continue
    first = groups[key]
    if entry.label != first.label:
      raise AnnotationError(f"{where}: label {entry.label!r} differs from {first.label!r} given "
                            f"earlier for {entry.id!r}")
    groups[key] = dataclasses.replace(first, captions=first.captions + entry.captions)
  if not groups:
    raise AnnotationError(f"{path}: no entries.")
  return _match_stems(list(groups.values()), os.path.abspath(media_dir))


def _csv_rows(path):
  with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM.
    reader = csv.DictReader(f)
    for row in reader:
      yield f"{path}, row {reader.line_num}", {_KEY_ALIASES.get(k, k): v for k, v in row.items()}


def _json_rows(path, kind):
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{path}: not valid JSON: {e}") from e
  for layout, keys, to_rows in [("MSR-VTT", {"videos", "sentences"}, _msrvtt_rows),
                                ("COCO", {"images", "annotations"}, _coco_rows)]:
    if isinstance(data, dict) and keys <= data.keys():
      try:
        data = to_rows(data)
      except (KeyError, TypeError) as e:
        raise AnnotationError(f"{path}: {layout} layout, but an item lacks {e}") from e
  if not isinstance(data, list):
    raise AnnotationError(
        f"{path}: expected a list of objects with a '{kind}' key, MSR-VTT's "
        "{'videos', 'sentences'} or COCO's {'images', 'annotations'}.")
  for i, row in enumerate(data):
    if not isinstance(row, dict):
      raise AnnotationError(f"{path}, entry {i}: expected an object, got {row!r}")
    yield f"{path}, entry {i}", {_KEY_ALIASES.get(k, k): v for k, v in row.items()}


def _msrvtt_rows(data):
  """MSR-VTT: its 'start time' / 'end time' are in the YouTube source, not the clip: ignored."""
  captions = collections.defaultdict(list)
  for s in data["sentences"]:
    captions[s["video_id"]].append(s["caption"])
  return [{"video": v["video_id"], "captions": captions[v["video_id"]],
           **({"label": str(v["category"])} if "category" in v else {}),
           **({"split": v["split"]} if "split" in v else {})} for v in data["videos"]]


def _coco_rows(data):
  captions = collections.defaultdict(list)
  for a in data["annotations"]:
    captions[a["image_id"]].append(a["caption"])
  return [{"image": im["file_name"], "captions": captions[im["id"]]} for im in data["images"]]


def _entry(row, where, kind, media_dir, default_split):
  """Entry of one annotation row (a dict of column -> value)."""
  name = row.get(kind)
  if name is None or str(name).strip() == "":
    raise AnnotationError(f"{where}: missing column '{kind}' (the {kind} path, relative to the "
                          f"{kind}s folder); columns present: {sorted(k for k in row if k)}")
  name = str(name).strip()
  captions = _captions(row, where)
  label = str(row.get("label") or "").strip()
  if not captions and not label:
    raise AnnotationError(f"{where}: missing column 'caption' or 'captions' (or a 'label') for "
                          f"{name!r}")
  start, end = (_seconds(row, k, where) if kind == "video" else None for k in ("start", "end"))
  if start is not None and end is not None and end <= start:
    raise AnnotationError(f"{where}: column 'end' ({end}) must be after 'start' ({start})")
  segment = "" if start is None and end is None else f"@{_fmt(start)}-{_fmt(end)}"
  return Entry(id=name + segment, path=os.path.abspath(os.path.join(media_dir, name)),
               captions=captions, label=label, start=start, end=end,
               split=str(row.get("split") or default_split))


def _captions(row, where):
  """Captions of a row: 'caption' (one string) and/or 'captions' (list, JSON list or a|b|c)."""
  value = row.get("captions")
  if isinstance(value, str) and value.strip().startswith("["):
    try:
      value = json.loads(value)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{where}: column 'captions' is not a valid JSON list: {e}") from e
  elif isinstance(value, str):
    value = value.split("|")
  captions = [*(value or []), row.get("caption") or ""]
  if not all(isinstance(c, str) for c in captions):
    raise AnnotationError(f"{where}: column 'captions' must hold strings, got {value!r}")
  return tuple(c.strip() for c in captions if c.strip())


def _seconds(row, key, where):
  value = row.get(key)
  if value is None or str(value).strip() == "":
    return None
  try:
    return float(value)
  except ValueError:
    raise AnnotationError(f"{where}: column '{key}' should be seconds, got {value!r}") from None


def _fmt(seconds):
  return "" if seconds is None else f"{seconds:g}"


def _match_stems(entries, media_dir):
  """Points missing extension-less paths (MSR-VTT `video0`, VATEX ids) at a file of that stem."""
  def unmatched(e):
    return not os.path.splitext(e.path)[1] and not os.path.exists(e.path)
  if not any(map(unmatched, entries)):
    return entries
  index = _files_by_stem(media_dir)
  return [dataclasses.replace(e, path=index.get(e.path, e.path)) if unmatched(e) else e
          for e in entries]


def _files_by_stem(media_dir):
  """{path without extension: path} of every file under media_dir (the first, sorted, wins)."""
  index = {}
  for root, _, files in os.walk(media_dir):
    for f in sorted(files):
      index.setdefault(os.path.join(root, os.path.splitext(f)[0]), os.path.join(root, f))
  return index


# ---------------------------------------------------------------------------------------------
# Building.


@dataclasses.dataclass
class Report:
  """What an ingestion wrote (`written`: split -> count) and skipped (with reasons)."""
  out_dir: str
  annotations: str
  config: dict
  written: dict = dataclasses.field(default_factory=dict)
  skipped: list = dataclasses.field(default_factory=list)

  def summary(self):
    counts = ", ".join(f"{s}: {n}" for s, n in sorted(self.written.items())) or "nothing"
    return (f"ingest: wrote {sum(self.written.values())} examples ({counts}), skipped "
            f"{len(self.skipped)} (reasons in {os.path.join(self.out_dir, REPORT_FILENAME)})")

  def save(self):
    reasons = collections.Counter(s["reason"].split(":")[0] for s in self.skipped)
    report = {**dataclasses.asdict(self), "num_written": sum(self.written.values()),
              "num_skipped": len(self.skipped), "skipped_by_reason": dict(reasons)}
    with open(os.path.join(self.out_dir, REPORT_FILENAME), "w") as f:
      json.dump(report, f, indent=2)


def ingest_videos(videos_dir, annotations, out_dir, name, split="train", num_frames=None,
                  fps=None, short_side=None, jpeg_quality=90, workers=1):
  """Decodes the annotated videos and writes them as a prepared TFDS dataset in `out_dir`.

  Args:
    videos_dir: the folder the annotation's video paths are relative to.
    annotations: CSV or JSON annotation file (see the module docstring).
    out_dir: the dataset directory to create (for `tfds.builder_from_directory`).
    name: the dataset name.
    split: the split of entries without a `split` column.
    num_frames, fps, short_side: frame sampling and size, as in `decode_video`.
    jpeg_quality: JPEG quality of the stored frames (1-95).
    workers: decoding processes (1: in this process).

  Returns:
    Report, also saved as out_dir/ingest_report.json.

  Raises:
    AnnotationError: a malformed annotation file.
    NoUsableInputs: no video could be decoded (the report is still written).
  """
  if num_frames is not None and fps is not None:
    raise ValueError(f"Give num_frames or fps, not both (got {num_frames} and {fps}).")
  entries = read_annotations(annotations, videos_dir, "video", split)
  decode = functools.partial(_video_example, num_frames=num_frames, fps=fps,
                             short_side=short_side, jpeg_quality=jpeg_quality)
  labels = sorted({e.label for e in entries} - {""})
  config = dict(kind="video", num_frames=num_frames, fps=fps, short_side=short_side,
                jpeg_quality=jpeg_quality, labels=labels)
  return _ingest(entries, decode, functools.partial(_features, "video", labels), out_dir, name,
                 annotations, config, workers)


def ingest_images(images_dir, annotations, out_dir, name, split="train", short_side=None,
                  jpeg_quality=90, workers=1):
  """Like `ingest_videos`, for images (features image/captions/label/id, label_id with labels).

  `annotations=None` reads ImageNet-style class folders: every image file under
  `images_dir/<class>/` is an example labelled `<class>`, in split `split`.
  """
  if annotations is None:
    entries = read_class_folders(images_dir, split)
    annotations = os.fspath(images_dir)
  else:
    entries = read_annotations(annotations, images_dir, "image", split)
  decode = functools.partial(_image_example, short_side=short_side, jpeg_quality=jpeg_quality)
  labels = sorted({e.label for e in entries} - {""})
  config = dict(kind="image", short_side=short_side, jpeg_quality=jpeg_quality, labels=labels)
  return _ingest(entries, decode, functools.partial(_features, "image", labels), out_dir, name,
                 annotations, config, workers)


def read_class_folders(images_dir, split="train"):
  """Entries (label = folder name, no caption) of the files in `images_dir/<class>/`, sorted."""
  images_dir = os.path.abspath(images_dir)
  classes = sorted(d for d in os.listdir(images_dir)
                   if os.path.isdir(os.path.join(images_dir, d)) and not d.startswith("."))
  entries = [Entry(id=f"{label}/{f}", path=os.path.join(images_dir, label, f), captions=(),
                   label=label, split=split)
             for label in classes for f in sorted(os.listdir(os.path.join(images_dir, label)))
             if not f.startswith(".") and os.path.isfile(os.path.join(images_dir, label, f))]
  if not entries:
    raise AnnotationError(f"{images_dir}: no class folders with files (expected "
                          "DIR/<class>/<image>), and no --annotations given.")
  return entries


def _video_example(entry, num_frames, fps, short_side, jpeg_quality):
  frames = decode_video(entry.path, num_frames, fps, entry.start, entry.end, short_side)
  return {"video": [encode_jpeg(f, jpeg_quality) for f in frames],
          "captions": list(entry.captions), "label": entry.label, "id": entry.id}


def _image_example(entry, short_side, jpeg_quality):
  image = load_image(entry.path, short_side)
  return {"image": encode_jpeg(image, jpeg_quality), "captions": list(entry.captions),
          "label": entry.label, "id": entry.id}


def _features(kind, labels):
  """TFDS features of a `kind` ('video' or 'image') dataset; `label_id` when there are labels."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  media = (tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg")
           if kind == "video" else
           tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"))
  features = {kind: media, "captions": tfds.features.Sequence(tfds.features.Text()),
              "label": tfds.features.Text(), "id": tfds.features.Text()}
  if labels:
    features["label_id"] = tfds.features.ClassLabel(names=labels)
  return tfds.features.FeaturesDict(features)


def _ingest(entries, decode, features_fn, out_dir, name, annotations, config, workers):
  """Decodes `entries` to a staging folder, then writes the splits that have examples.

  TensorFlow is imported (by `features_fn`) only once there is something to write.
  """
  out_dir = os.fspath(out_dir)
  for what, value in [("dataset name", name), *(("split", e.split) for e in entries)]:
    if not re.fullmatch(r"[a-zA-Z]\w*", value):
      raise errors.UserError(f"Invalid {what} {value!r}: use letters, digits and '_', starting "
                             "with a letter (TFDS loads datasets and splits by such names).")
  if os.path.exists(os.path.join(out_dir, "dataset_info.json")):
    raise errors.ExistingPathError(
        f"{out_dir} already holds a dataset: delete it or pick another --out.")
  staging = os.path.join(out_dir, ".ingest_staging")
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  report = Report(out_dir=out_dir, annotations=os.fspath(annotations), config=config)
  try:
    _decode_all(entries, decode, workers, staging, report)
    report.save()
    if not report.written:
      raise NoUsableInputs(f"None of the {len(entries)} entries of {annotations} could be read; "
                           f"reasons in {os.path.join(out_dir, REPORT_FILENAME)}")
    labels = config.get("labels", [])
    label_ids = {label: i for i, label in enumerate(labels)}
    if labels:
      with open(os.path.join(out_dir, CLASS_NAMES_FILENAME), "w", encoding="utf-8") as f:
        f.write("".join(f"{label}\n" for label in labels))
    _write_tfds(name, features_fn(), staging, sorted(report.written), label_ids, out_dir,
                description=f"Ingested by videococa.data.ingest from {annotations}: {config}")
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return report


def _decode_all(entries, decode, workers, staging, report):
  """Decodes entries (in `workers` processes), pickling examples to staging/<split>.pkl."""
  outputs = {}
  with contextlib.ExitStack() as stack:
    results = _map(functools.partial(_try, decode), entries, workers, stack)
    for entry, example, reason in tqdm.tqdm(results, "decoding", len(entries), unit="file"):
      if reason is not None:
        report.skipped.append({"id": entry.id, "path": entry.path, "split": entry.split,
                               "reason": reason})
        continue
      if entry.split not in outputs:
        outputs[entry.split] = stack.enter_context(
            open(os.path.join(staging, f"{entry.split}.pkl"), "wb"))
      pickle.dump(example, outputs[entry.split])
      report.written[entry.split] = report.written.get(entry.split, 0) + 1
  report.skipped.sort(key=lambda s: (s["split"], s["id"]))


def _try(decode, entry):
  """(entry, example, None), or (entry, None, reason) for a file that cannot be used."""
  try:
    return entry, decode(entry), None
  except DecodeError as e:
    return entry, None, str(e)
  except Exception as e:  # pylint: disable=broad-except  # One odd file never stops a build.
    return entry, None, f"{type(e).__name__}: {e}"


def _map(fn, items, workers, stack) -> Iterable:
  """fn over items, unordered over `workers` spawned processes when workers > 1."""
  if workers <= 1:
    return map(fn, items)
  # Spawned, not forked: forking a process that has started TensorFlow's threads can deadlock.
  pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
  return pool.imap_unordered(fn, items)


def _write_tfds(name, features, staging, splits, label_ids, out_dir, description):
  """Writes the pickled examples of `splits` as a TFDS dataset whose files land in out_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class _Builder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
    # TFDS 4.9.10 resolves `code_path` of builders defined in a package with the
    # `importlib_resources` backport, absent on Python >= 3.9; an ad-hoc builder has no code path.
    code_path = None

  def examples(split):
    with open(os.path.join(staging, f"{split}.pkl"), "rb") as f:
      while True:
        try:
          example = pickle.load(f)
        except EOFError:
          return
        if label_ids:
          example["label_id"] = label_ids.get(example["label"], -1)
        yield example["id"], example

  builder = _Builder(name=name, version=VERSION, features=features, description=description,
                     split_datasets={s: examples(s) for s in splits}, data_dir=staging)
  builder.download_and_prepare()
  for f in os.listdir(builder.data_dir):
    os.replace(os.path.join(builder.data_dir, f), os.path.join(out_dir, f))


# ---------------------------------------------------------------------------------------------
# Command line.


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("videos", None, "Folder of the videos (for `video`).")
  flags.DEFINE_string("images", None, "Folder of the images (for `image`).")
  flags.DEFINE_string("annotations", None, "CSV or JSON annotation file (`image`: optional, "
                      "without it --images holds class folders).")
  flags.DEFINE_string("out", None, "Dataset directory to create.", required=True)
  flags.DEFINE_string("name", None, "Dataset name.", required=True)
  flags.DEFINE_string("split", "train", "Split of entries without a `split` column.")
  flags.DEFINE_integer("num_frames", None, "Frames per video, uniformly over the segment.")
  flags.DEFINE_float("fps", None, "Frames per second to sample (instead of --num_frames).")
  flags.DEFINE_integer("short_side", None, "Resize so that the short side is this many pixels.")
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored frames.")
  flags.DEFINE_integer("workers", 1, "Decoding processes.")


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) != 2 or argv[1] not in ("video", "image"):
    raise app.UsageError("Usage: python -m videococa.data.ingest video|image --annotations=... "
                         "--out=... --name=... (--videos=DIR | --images=DIR)")
  kind = argv[1]
  media_dir = FLAGS.videos if kind == "video" else FLAGS.images
  if media_dir is None:
    raise app.UsageError(f"`{kind}` needs --{kind}s=DIR, the folder of the {kind}s.")
  if FLAGS.num_frames is not None and FLAGS.fps is not None:
    raise app.UsageError("Give --num_frames or --fps, not both.")
  if kind == "video" and FLAGS.annotations is None:
    raise app.UsageError("`video` needs --annotations=FILE (CSV or JSON).")
  common = dict(out_dir=FLAGS.out, name=FLAGS.name, split=FLAGS.split,
                short_side=FLAGS.short_side, jpeg_quality=FLAGS.jpeg_quality,
                workers=FLAGS.workers)
  if not os.path.isdir(media_dir):
    raise errors.MissingPathError(f"--{kind}s={media_dir} is not a directory.")
  # Bad annotations, unreadable inputs (NoUsableInputs), an existing --out: errors.UserError, which
  # cli.run reports as one line with exit status 2.
  if kind == "video":
    report = ingest_videos(media_dir, FLAGS.annotations, num_frames=FLAGS.num_frames,
                           fps=FLAGS.fps, **common)
  else:
    report = ingest_images(media_dir, FLAGS.annotations, **common)
  print(report.summary())


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
