"""Training input: per-process numpy batches -> global sharded arrays, prefetched in a thread.

`config.input.source` picks the per-process batch stream: 'random' (no TensorFlow needed: random
frames and captions; example i of step s is a pure function of (seed, s, i), and each process
makes only the rows of the global batch its devices hold, so the global batch is the same for any
number of processes and a run resumed at step s sees the same batches) or 'tfds' (the tf.data
pipeline in `videococa.data.pipeline`, imported only then).
Token ids follow the tokenizer's convention: pad 0, bos 2, eos 3.
"""
from __future__ import annotations

import itertools
import queue
import threading
from typing import Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from videococa.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from videococa.errors import UserError
from videococa.train import sharding

FIRST_WORD_ID = EOS_ID + 1  # Random words: any id after the special tokens.


def random_batch(rng: np.random.Generator, batch: int, num_frames: int, image_size: int,
                 text_len: int, vocab_size: int) -> dict[str, np.ndarray]:
  """frames `[batch, num_frames, S, S, 3]` uint8 and text `[batch, text_len]` int32
  (`[BOS, words..., EOS, PAD...]`, random caption lengths)."""
  frames = rng.integers(0, 256, (batch, num_frames, image_size, image_size, 3), dtype=np.uint8)
  text = rng.integers(FIRST_WORD_ID, vocab_size, (batch, text_len), dtype=np.int32)
  lengths = rng.integers(2, text_len, batch)  # Position of EOS.
  positions = np.arange(text_len)[None]
  text[:, 0] = BOS_ID
  text = np.where(positions == lengths[:, None], EOS_ID, text)
  text = np.where(positions > lengths[:, None], PAD_ID, text)
  return dict(frames=frames, text=text.astype(np.int32))


def random_batches(config: ml_collections.ConfigDict, rows: np.ndarray, start_step: int
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Endless random batches of the global-batch `rows` (e.g. `sharding.process_batch_rows`).

  Row i of step s is drawn from the seed (config.seed, s, i) alone.
  """
  model = config.model
  for step in itertools.count(start_step):
    examples = [random_batch(np.random.default_rng([config.seed, step, int(row)]), 1,
                             config.input.num_frames, model.vision.image_size, model.max_len + 1,
                             model.vocab_size) for row in rows]
    yield {k: np.concatenate([e[k] for e in examples]) for k in examples[0]}


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs `iterator` in a background thread, `size` items ahead; re-raises its errors."""
  items: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def worker():
    try:
      for item in iterator:
        items.put(item)
      items.put(done)
    except BaseException as e:  # Forwarded to the consumer.
      items.put(e)

  threading.Thread(target=worker, daemon=True).start()
  while True:
    item = items.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item


def make_train_iterator(config: ml_collections.ConfigDict, mesh: Mesh, start_step: int,
                        workdir: str) -> Iterator[dict[str, jax.Array]]:
  """Global training batches from `start_step` on, as arrays sharded over the mesh's batch axes."""
  local_batch = sharding.local_batch_size(config.input.batch_size, mesh)
  source = config.input.source
  if source == "random":
    rows = sharding.process_batch_rows(mesh, config.input.batch_size)
    batches = random_batches(config, rows, start_step)
  elif source == "tfds":
    from videococa.data import pipeline  # TensorFlow enters here only.
    batches = pipeline.make_train_iterator(config, local_batch, start_step, workdir)
  else:
    raise UserError(f"config.input.source={source!r}; choose 'random' or 'tfds'.")
  return prefetch((sharding.put_batch(b, mesh) for b in batches), config.input.get("prefetch", 2))
