"""Synthetic `shapes_video` clips: scene sampler, renderer and caption generator (pure numpy).

Every clip shows 1-2 flat-coloured shapes on a muted, smooth background texture. All objects of a
clip share one motion (`MOTIONS`), so every clip has exactly one motion label. A static *image* view
(`sample_image`) places the objects in cells of a 3x3 grid and captions their colour, size, shape
and position instead.

Splits differ only in the compositions they may contain:

* ``train`` / ``validation``: no object has a (colour, motion) pair in `HELDOUT_COLOR_MOTION` nor a
  (shape, motion) pair in `HELDOUT_SHAPE_MOTION`.
* ``test``: the first object of every clip has at least one held-out pair, so evaluation on ``test``
  is zero-shot on compositions never seen in training. Every colour, shape and motion on its own
  still appears in ``train``.

Everything is a function of a `np.random.Generator`: the same seed gives the same spec, frames and
captions. This module must not import TensorFlow (it also runs on accelerator hosts without it).
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

# ----------------------------------------------------------------------------- Label set.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 30),
    "green": (30, 180, 50),
    "cyan": (0, 220, 230),
    "blue": (30, 70, 240),
    "purple": (160, 50, 210),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "still")
# 3x3 grid cells, row-major; used by the static image view.
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
SPLITS = ("train", "validation", "test")

# Zero-shot motion classification: prompt = template.format(class name), one class per motion.
MOTION_CLASS_NAMES = ("moving left", "moving right", "moving up", "moving down", "growing",
                      "shrinking", "staying still")
MOTION_PROMPT_TEMPLATES = ("a shape {}", "an object {}", "something {}", "a video of a shape {}",
                           "a clip of an object {}")

# Compositions never shown in train/validation. Each motion has at least one held-out pair, so a
# test clip can be sampled for every motion class; each colour/shape still appears with 6 motions.
HELDOUT_COLOR_MOTION = (("red", "grow"), ("orange", "still"), ("yellow", "left"), ("green", "down"),
                        ("cyan", "shrink"), ("blue", "right"), ("purple", "up"))
HELDOUT_SHAPE_MOTION = (("circle", "right"), ("square", "grow"), ("triangle", "down"),
                        ("diamond", "left"), ("cross", "still"))

# ----------------------------------------------------------------------------- Geometry.
# Object radius (fraction of min(H, W)) at the reference scale 1; grow/shrink go from 1/sqrt(2) to
# sqrt(2) times it (2x linear size, 4x area), so `size` describes the object at mid clip.
SIZE_RADIUS = {"small": 0.08, "large": 0.14}
GROW_RANGE = (2 ** -0.5, 2 ** 0.5)
# Translation over a clip, as a fraction of the frame width (left/right) or height (up/down).
TRANSLATION_RANGE = (0.35, 0.45)
# Half-extent of each shape's bounding box in units of its radius (used to keep objects inside the
# frame and apart from each other).
SHAPE_EXTENT = {"circle": 1.0, "square": 0.85, "triangle": 1.25, "diamond": 1.2, "cross": 1.05}
_MIN_GAP_PX = 2.0  # Minimum gap between the bounding boxes of two objects.
_PLACEMENT_TRIES = 30


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside test of `shape` at coordinates (u, v) in radius units (v points down); boolean mask."""
  au, av = np.abs(u), np.abs(v)
  if shape == "circle":
    return u * u + v * v <= 1.0
  if shape == "square":
    return np.maximum(au, av) <= 0.85
  if shape == "triangle":  # Apex up; centroid (almost exactly) at the origin.
    return (v <= 0.65) & (au <= (v + 1.25) * 0.5774)
  if shape == "diamond":
    return au + av <= 1.2
  if shape == "cross":
    return ((au <= 0.38) & (av <= 1.05)) | ((av <= 0.38) & (au <= 1.05))
  raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


# ----------------------------------------------------------------------------- Specs.
@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One object: attributes and trajectory (pixel centre and radius scale at first/last frame)."""
  color: str
  shape: str
  size: str
  motion: str
  start: tuple[float, float]  # (x, y) centre at the first frame, pixels.
  end: tuple[float, float]    # (x, y) centre at the last frame, pixels.
  scale: tuple[float, float]  # Radius multiplier at the first / last frame (geometric in between).


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """A full scene: everything `render` and the caption generators need."""
  objects: tuple[ObjectSpec, ...]
  motion: str
  num_frames: int
  height: int
  width: int
  background_seed: int


def is_heldout(color: str, shape: str, motion: str) -> bool:
  """Whether an object with these attributes has a held-out (colour|shape, motion) pair."""
  return (color, motion) in HELDOUT_COLOR_MOTION or (shape, motion) in HELDOUT_SHAPE_MOTION


def position_name(obj: ObjectSpec, height: int, width: int) -> str:
  """3x3 grid cell (one of `POSITIONS`) containing the object's first-frame centre."""
  col = min(int(obj.start[0] * 3 / width), 2)
  row = min(int(obj.start[1] * 3 / height), 2)
  return POSITIONS[3 * row + col]


def _radius(size: str, height: int, width: int) -> float:
  return SIZE_RADIUS[size] * min(height, width)


def _half_extent(shape: str, size: str, max_scale: float, height: int, width: int) -> float:
  return SHAPE_EXTENT[shape] * _radius(size, height, width) * max_scale


def _apart(centres, extents) -> bool:
  """Whether the bounding boxes (centre +- extent) of two objects are separated by `_MIN_GAP_PX`."""
  (xa, ya), (xb, yb) = centres
  gap = extents[0] + extents[1] + _MIN_GAP_PX
  return abs(xa - xb) >= gap or abs(ya - yb) >= gap


def _draw_objects(rng: np.random.Generator, num: int, colors, shapes) -> list[tuple[str, ...]]:
  """(colour, shape, size) of `num` objects: distinct colours from `colors`, any of `shapes`."""
  picked = rng.choice(len(colors), num, replace=False)
  return [(colors[c], shapes[rng.integers(len(shapes))], SIZES[rng.integers(len(SIZES))])
          for c in picked]


def _sample_attributes(rng: np.random.Generator, split: str, motion: str, num_objects: int):
  """(colour, shape, size) per object obeying the held-out constraint of `split`."""
  if split != "test":
    return _draw_objects(rng, num_objects,
                         [c for c in COLORS if (c, motion) not in HELDOUT_COLOR_MOTION],
                         [s for s in SHAPES if (s, motion) not in HELDOUT_SHAPE_MOTION])
  # The first object carries a held-out pair with this motion; the others are unconstrained.
  pairs = ([("color", c) for c, m in HELDOUT_COLOR_MOTION if m == motion]
           + [("shape", s) for s, m in HELDOUT_SHAPE_MOTION if m == motion])
  kind, value = pairs[rng.integers(len(pairs))]
  (color, shape, size), = _draw_objects(rng, 1, [value] if kind == "color" else list(COLORS),
                                        [value] if kind == "shape" else SHAPES)
  return [(color, shape, size)] + _draw_objects(rng, num_objects - 1,
                                                [c for c in COLORS if c != color], SHAPES)


def _place_moving(rng, motion, attrs, height, width):
  """Trajectories for objects sharing `motion`, inside the frame and apart; None if it failed."""
  max_scale = GROW_RANGE[1] if motion in ("grow", "shrink") else 1.0
  scale = {"grow": GROW_RANGE, "shrink": GROW_RANGE[::-1]}.get(motion, (1.0, 1.0))
  extents = [_half_extent(s, z, max_scale, height, width) for _, s, z in attrs]
  # Translation shared by all objects, shrunk if the largest object leaves too little room.
  axis = {"left": 0, "right": 0, "up": 1, "down": 1}.get(motion)
  shift = np.zeros(2)
  if axis is not None:
    length = (width, height)[axis]
    room = length - 2 * max(extents)
    dist = min(rng.uniform(*TRANSLATION_RANGE) * length, room)
    shift[axis] = -dist if motion in ("left", "up") else dist
  for _ in range(_PLACEMENT_TRIES):
    starts = []
    for e in extents:
      lo = np.array([e, e]) + np.maximum(-shift, 0)
      hi = np.array([width - e, height - e]) - np.maximum(shift, 0)
      starts.append(rng.uniform(lo, hi))
    if len(starts) == 1 or _apart(starts, extents):
      break
  else:
    return None
  return tuple(
      ObjectSpec(color=c, shape=s, size=z, motion=motion, start=(float(p[0]), float(p[1])),
                 end=(float(p[0] + shift[0]), float(p[1] + shift[1])), scale=scale)
      for (c, s, z), p in zip(attrs, starts))


def _check_frame(num_frames: int, height: int, width: int, min_frames: int):
  if num_frames < min_frames or height < 16 or width < 16:
    raise ValueError(f"Need num_frames >= {min_frames} and height, width >= 16; got "
                     f"num_frames={num_frames}, height={height}, width={width}.")


def sample_clip(rng: np.random.Generator, split: str = "train", *, num_frames: int = 16,
                height: int = 64, width: int = 64, max_objects: int = 2) -> ClipSpec:
  """Samples a video clip spec obeying the held-out constraint of `split` (see module docstring).

  The motion is uniform over `MOTIONS`, the number of objects uniform over [1, max_objects].
  Two-object scenes whose objects cannot be placed apart are resampled from scratch.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}.")
  _check_frame(num_frames, height, width, min_frames=2)
  while True:
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    attrs = _sample_attributes(rng, split, motion, int(rng.integers(1, max_objects + 1)))
    objects = _place_moving(rng, motion, attrs, height, width)
    if objects is not None:
      return ClipSpec(objects=objects, motion=motion, num_frames=num_frames, height=height,
                      width=width, background_seed=int(rng.integers(2 ** 31)))


def sample_image(rng: np.random.Generator, *, height: int = 64, width: int = 64,
                 max_objects: int = 2) -> ClipSpec:
  """Samples a static single-frame scene: 1..max_objects objects in distinct 3x3 grid cells.

  Each object sits near the centre of its cell (clamped into the frame), so `position_name` is
  unambiguous. There is no held-out constraint (the image view has no motion).
  """
  _check_frame(1, height, width, min_frames=1)
  while True:
    num_objects = int(rng.integers(1, max_objects + 1))
    attrs = _draw_objects(rng, num_objects, list(COLORS), SHAPES)
    cells = rng.choice(len(POSITIONS), num_objects, replace=False)
    extents = [_half_extent(s, z, 1.0, height, width) for _, s, z in attrs]
    centres = []
    for cell, e in zip(cells, extents):
      jitter = rng.uniform(-0.1, 0.1, size=2) * (width, height)
      x = np.clip((cell % 3 + 0.5) * width / 3 + jitter[0], e, width - e)
      y = np.clip((cell // 3 + 0.5) * height / 3 + jitter[1], e, height - e)
      centres.append((float(x), float(y)))
    if num_objects == 1 or _apart(centres, extents):
      objects = tuple(ObjectSpec(color=c, shape=s, size=z, motion="still", start=p, end=p,
                                 scale=(1.0, 1.0)) for (c, s, z), p in zip(attrs, centres))
      return ClipSpec(objects=objects, motion="still", num_frames=1, height=height, width=width,
                      background_seed=int(rng.integers(2 ** 31)))


# ----------------------------------------------------------------------------- Rendering.
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] bilinear upsampling matrix from n_in grid points to n_out pixel centres."""
  pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
  lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
  frac = pos - lo
  m = np.zeros((n_out, n_in), np.float32)
  m[np.arange(n_out), lo] = 1 - frac
  m[np.arange(n_out), lo + 1] = frac
  return m


def render_background(seed: int, height: int, width: int) -> np.ndarray:
  """Muted smooth texture `[H, W, 3] float32` in [40, 175]: low-frequency noise plus faint stripes.

  Channels differ by at most ~40 levels (greyish), far from the saturated object colours.
  """
  rng = np.random.default_rng(seed)
  gh, gw = rng.integers(2, 6, size=2)
  ay, ax = _interp_matrix(height, gh), _interp_matrix(width, gw)
  luma = rng.uniform(-30, 30, size=(gh, gw, 1))      # Shared by the channels: brightness blobs.
  chroma = rng.uniform(-8, 8, size=(gh, gw, 3))      # Slight colour variation.
  grid = (luma + chroma).astype(np.float32)
  noise = (ay @ (grid.transpose(2, 0, 1) @ ax.T)).transpose(1, 2, 0)  # [H, W, 3]
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 6), rng.uniform(0, 2 * np.pi)
  stripes = rng.uniform(0, 12) * np.sin(
      2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) / width + phase)
  base = rng.uniform(70, 140) + rng.uniform(-12, 12, size=3)
  return np.clip(base + noise + stripes[..., None], 40, 175).astype(np.float32)


def render(spec: ClipSpec) -> np.ndarray:
  """Renders `spec` to `[num_frames, H, W, 3] uint8` frames (flat-coloured objects, in order).

  Centres move linearly and radii scale geometrically from the first to the last frame.
  """
  t, h, w = spec.num_frames, spec.height, spec.width
  frames = np.broadcast_to(render_background(spec.background_seed, h, w).astype(np.uint8),
                           (t, h, w, 3)).copy()
  alpha = np.linspace(0.0, 1.0, t, dtype=np.float32)  # [T] clip progress; [0.] for one frame.
  ys = np.arange(h, dtype=np.float32) + 0.5
  xs = np.arange(w, dtype=np.float32) + 0.5
  for obj in spec.objects:
    cx = obj.start[0] + (obj.end[0] - obj.start[0]) * alpha
    cy = obj.start[1] + (obj.end[1] - obj.start[1]) * alpha
    radius = _radius(obj.size, h, w) * obj.scale[0] * (obj.scale[1] / obj.scale[0]) ** alpha
    u = (xs[None, None, :] - cx[:, None, None]) / radius[:, None, None]  # [T, 1, W]
    v = (ys[None, :, None] - cy[:, None, None]) / radius[:, None, None]  # [T, H, 1]
    frames[_shape_mask(obj.shape, u, v)] = COLORS[obj.color]
  return frames


def object_mask(frames: np.ndarray, color: str) -> np.ndarray:
  """Pixels of `frames` ([..., H, W, 3] uint8, as rendered, not JPEG-decoded) painted `color`."""
  return np.all(frames == np.array(COLORS[color], np.uint8), axis=-1)


# ----------------------------------------------------------------------------- Captions.
COLOR_WORDS = {"red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
               "cyan": ("cyan", "turquoise"), "blue": ("blue",), "purple": ("purple", "violet"),
               "white": ("white",)}
SHAPE_WORDS = {"circle": ("circle", "ball", "disc"), "square": ("square", "box", "block"),
               "triangle": ("triangle",), "diamond": ("diamond", "rhombus"),
               "cross": ("cross", "plus")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Per motion: (singular verb phrase, plural verb phrase, gerund phrase) synonyms.
MOTION_WORDS = {
    "left": (("moves to the left", "move to the left", "moving to the left"),
             ("slides left", "slide left", "sliding left"),
             ("goes left", "go left", "going left"),
             ("travels leftward", "travel leftward", "traveling leftward")),
    "right": (("moves to the right", "move to the right", "moving to the right"),
              ("slides right", "slide right", "sliding right"),
              ("goes right", "go right", "going right"),
              ("travels rightward", "travel rightward", "traveling rightward")),
    "up": (("moves up", "move up", "moving up"),
           ("rises", "rise", "rising"),
           ("goes upward", "go upward", "going upward"),
           ("slides up", "slide up", "sliding up")),
    "down": (("moves down", "move down", "moving down"),
             ("falls", "fall", "falling"),
             ("goes downward", "go downward", "going downward"),
             ("drops", "drop", "dropping")),
    "grow": (("grows", "grow", "growing"),
             ("gets bigger", "get bigger", "getting bigger"),
             ("expands", "expand", "expanding"),
             ("becomes larger", "become larger", "becoming larger")),
    "shrink": (("shrinks", "shrink", "shrinking"),
               ("gets smaller", "get smaller", "getting smaller"),
               ("contracts", "contract", "contracting"),
               ("becomes smaller", "become smaller", "becoming smaller")),
    "still": (("stays still", "stay still", "staying still"),
              ("does not move", "do not move", "not moving"),
              ("rests", "rest", "resting"),
              ("remains in place", "remain in place", "remaining in place")),
}
POSITION_WORDS = {
    "top left": ("in the top left", "in the top left corner", "at the upper left"),
    "top": ("at the top", "near the top", "at the top center"),
    "top right": ("in the top right", "in the top right corner", "at the upper right"),
    "left": ("on the left", "on the left side", "at the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "on the right side", "at the right"),
    "bottom left": ("in the bottom left", "in the bottom left corner", "at the lower left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom center"),
    "bottom right": ("in the bottom right", "in the bottom right corner", "at the lower right"),
}
# Templates: {a}/{the}: noun phrase with indefinite/definite article; {sing}/{plur}/{ger}: motion
# phrase; {pos}: position phrase. Suffixes 1/2 index the objects.
VIDEO_TEMPLATES_1 = ("{a} {sing}", "{a} is {ger}", "there is {a} {ger}", "{the} {sing}",
                     "in this clip {a} {sing}")
VIDEO_TEMPLATES_2 = ("{a1} and {a2} {plur}", "{a1} and {a2} are {ger}",
                     "there is {a1} and {a2} {ger}", "both {the1} and {the2} {plur}",
                     "{the1} and {the2} both {plur}")
IMAGE_TEMPLATES_1 = ("{a} {pos}", "there is {a} {pos}", "{pos} there is {a}", "{a} is {pos}",
                     "{a} sits {pos}")
IMAGE_TEMPLATES_2 = ("{a1} {pos1} and {a2} {pos2}", "there is {a1} {pos1} and {a2} {pos2}",
                     "{a1} is {pos1} and {a2} is {pos2}")
MAX_CAPTION_WORDS = 18
_CAPTION_TRIES = 200


def _pick(rng: np.random.Generator, options):
  return options[rng.integers(len(options))]


def _noun_phrases(rng, obj: ObjectSpec, p_size: float) -> tuple[str, str]:
  """('a small red ball', 'the small red ball'); the size word is kept with probability p_size."""
  words = [_pick(rng, COLOR_WORDS[obj.color]), _pick(rng, SHAPE_WORDS[obj.shape])]
  if rng.random() < p_size:
    words.insert(0, _pick(rng, SIZE_WORDS[obj.size]))
  phrase = " ".join(words)
  article = "an" if phrase[0] in "aeiou" else "a"
  return f"{article} {phrase}", f"the {phrase}"


def _distinct_captions(rng, make, num: int) -> list[str]:
  """`num` distinct captions of at most `MAX_CAPTION_WORDS` words drawn from `make(rng)`."""
  captions = []
  for _ in range(_CAPTION_TRIES):
    caption = make(rng)
    if len(caption.split()) <= MAX_CAPTION_WORDS and caption not in captions:
      captions.append(caption)
      if len(captions) == num:
        return captions
  raise RuntimeError(f"Only {len(captions)} distinct captions after {_CAPTION_TRIES} draws; "
                     f"lower num={num} or add templates/synonyms.")


def video_captions(spec: ClipSpec, rng: np.random.Generator, num: int = 5) -> list[str]:
  """`num` distinct lowercase reference captions naming each object's colour and shape (size
  sometimes) and the shared motion, e.g. 'a small red circle moves to the left'."""
  def make(rng):
    sing, plur, ger = _pick(rng, MOTION_WORDS[spec.motion])
    phrases = [_noun_phrases(rng, o, p_size=0.5) for o in spec.objects]
    if len(phrases) == 1:
      (a, the), = phrases
      return _pick(rng, VIDEO_TEMPLATES_1).format(a=a, the=the, sing=sing, ger=ger)
    (a1, the1), (a2, the2) = phrases
    return _pick(rng, VIDEO_TEMPLATES_2).format(a1=a1, the1=the1, a2=a2, the2=the2, plur=plur,
                                                ger=ger)
  if len(spec.objects) not in (1, 2):
    raise ValueError(f"Captions support 1 or 2 objects, got {len(spec.objects)}.")
  return _distinct_captions(rng, make, num)


def image_captions(spec: ClipSpec, rng: np.random.Generator, num: int = 5) -> list[str]:
  """`num` distinct captions of a static scene naming colour, shape, size (usually) and position,
  e.g. 'a large green square in the top left'."""
  positions = [position_name(o, spec.height, spec.width) for o in spec.objects]

  def make(rng):
    phrases = [_noun_phrases(rng, o, p_size=0.8)[0] for o in spec.objects]
    pos = [_pick(rng, POSITION_WORDS[p]) for p in positions]
    if len(phrases) == 1:
      return _pick(rng, IMAGE_TEMPLATES_1).format(a=phrases[0], pos=pos[0])
    return _pick(rng, IMAGE_TEMPLATES_2).format(a1=phrases[0], pos1=pos[0], a2=phrases[1],
                                                pos2=pos[1])
  if len(spec.objects) not in (1, 2):
    raise ValueError(f"Captions support 1 or 2 objects, got {len(spec.objects)}.")
  return _distinct_captions(rng, make, num)


def mentioned_motions(caption: str) -> set[str]:
  """Motions (`MOTIONS`) whose phrases (any synonym and form) occur in `caption` as whole words."""
  return {m for m, forms in MOTION_WORDS.items()
          if any(re.search(rf"\b{re.escape(p)}\b", caption) for f in forms for p in f)}


def _find_motion_phrase(caption: str, motion: str) -> tuple[re.Match, int, int]:
  """(match, synonym slot, verb form) of the longest phrase of `motion` in `caption`.

  Raises ValueError if `caption` has no phrase of `motion`.
  """
  phrases = [(len(p), p, slot, form) for slot, forms in enumerate(MOTION_WORDS[motion])
             for form, p in enumerate(forms)]
  for _, phrase, slot, form in sorted(phrases, reverse=True):  # Longest phrase first.
    match = re.search(rf"\b{re.escape(phrase)}\b", caption)
    if match:
      return match, slot, form
  raise ValueError(f"Caption {caption!r} has no phrase of motion {motion!r}.")


def motion_negatives(caption: str, motion: str) -> list[str]:
  """`caption` of a `motion` clip rewritten for each other motion (in `MOTIONS` order): its motion
  phrase replaced by the same synonym slot and verb form of the other motion, e.g. 'a red ball
  slides left' -> ['a red ball slides right', 'a red ball slides up', ...]. Verb-swapped hard
  negatives for contrastive training (as in Momeni et al. 2023, "Verbs in Action").

  Raises ValueError if `caption` has no phrase of `motion`.
  """
  match, slot, form = _find_motion_phrase(caption, motion)
  return [caption[:match.start()] + MOTION_WORDS[other][slot][form] + caption[match.end():]
          for other in MOTIONS if other != motion]


def motion_phrases(caption: str, motion: str) -> list[str]:
  """The motion phrase of `caption` (a `motion` clip's caption) alone, then the same synonym slot
  and verb form of each other motion (in `MOTIONS` order), e.g. 'a red ball slides left' ->
  ['slides left', 'slides right', 'slides up', ...]: the verb-phrase targets of Momeni et al.
  2023 ("Verbs in Action"), where the clip must pick its caption's verb phrase among these.

  Raises ValueError if `caption` has no phrase of `motion`.
  """
  _, slot, form = _find_motion_phrase(caption, motion)
  return [MOTION_WORDS[motion][slot][form]] + [MOTION_WORDS[other][slot][form]
                                               for other in MOTIONS if other != motion]
