"""Metric output: TensorBoard event files (tensorboardX, no TensorFlow), a JSON-lines copy for
reports, and one console line per log step. Only process 0 writes."""
from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter


def console(message: str) -> None:
  """A line for the human at the terminal (process 0 only; keeps tqdm bars intact) and the log."""
  logging.info(message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


class MetricWriter:
  """Writes scalar metrics to `{workdir}/tensorboard/` and `{workdir}/metrics.jsonl`."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self.tensorboard_dir = os.path.join(workdir, "tensorboard")
      self._tb = SummaryWriter(self.tensorboard_dir)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
    """Writes `{prefix}/{name}` scalars for `step`; non-scalars are ignored."""
    if not self.active:
      return
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    for name, value in scalars.items():
      self._tb.add_scalar(f"{prefix}/{name}", value, step)
    self._jsonl.write(json.dumps({**scalars, "step": step, "prefix": prefix}) + "\n")
    self._jsonl.flush()
    console(f"[{prefix} step {step}] " +
            ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))

  def flush(self) -> None:
    if self.active:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()
      self._jsonl.close()
      self.active = False


def read_jsonl(path: str, prefix: str | None = None) -> list[dict]:
  """Reads back `metrics.jsonl` records, optionally only those with the given prefix."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if prefix is None or r["prefix"] == prefix]
