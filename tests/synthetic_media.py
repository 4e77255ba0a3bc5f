"""Small synthetic media for end-to-end tests: mp4 clips and JPEG images written in the test."""
import os

import av
import numpy as np
from PIL import Image

COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230),
          "yellow": (230, 210, 40), "white": (240, 240, 240)}


def scene(color, position, size=(48, 64), background=(30, 30, 30), square=16):
  """uint8 `[H, W, 3]`: a `color` square whose top-left corner is at `position` (row, col)."""
  image = np.empty((*size, 3), np.uint8)
  image[:] = background
  row, col = position
  image[row:row + square, col:col + square] = COLORS[color]
  return image


def write_moving_square(path, color, direction, frames=12, size=(48, 64), rate=6):
  """An mp4 (mpeg4) of a `color` square moving 'left' or 'right' over `frames` frames."""
  height, width = size
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.bit_rate = 1_000_000
    for i in range(frames):
      col = int(i * (width - 16) / (frames - 1))
      if direction == "left":
        col = width - 16 - col
      rgb = scene(color, ((height - 16) // 2, col), size)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode())
  return path


def write_image(path, seed, size):
  """A JPEG (quality 95) of `size` (H, W): a colour gradient, a random square and mild noise."""
  rng = np.random.default_rng(seed)
  height, width = size
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 / width, y * 255 / height, ((x + y) * 2) % 256], -1)
  image = base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 8, (height, width, 3))
  top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
  image[top:top + height // 3, left:left + width // 3] = rng.integers(0, 256, 3)
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=95)
  return path
