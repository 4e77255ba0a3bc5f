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
  """Writes scalar metrics to `{workdir}/tensorboard/` and `{workdir}/metrics.jsonl`.

  `resumed_step`: the step a run restarts from (its checkpoint). Records of later steps, written by
  an earlier run that died after that checkpoint, are about to be written again: they are dropped
  from metrics.jsonl, and TensorBoard is told to hide its events from step `resumed_step + 1` on
  (tensorboardX's `purge_step`), so both show one clean curve, the re-run's.
  """

  def __init__(self, workdir: str, resumed_step: int | None = None):
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self.tensorboard_dir = os.path.join(workdir, "tensorboard")
      self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
      purge_step = None
      if resumed_step is not None and drop_records_after(self.jsonl_path, resumed_step):
        purge_step = resumed_step + 1
      _remove_empty_event_files(self.tensorboard_dir)
      self._tb = SummaryWriter(self.tensorboard_dir, purge_step=purge_step)
      self._jsonl = open(self.jsonl_path, "a")

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
    """Writes `{prefix}/{name}` scalars for `step`; non-scalars are ignored."""
    if not self.active:
      return
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    for name, value in scalars.items():
      self._tb.add_scalar(f"{prefix}/{name}", value, step)
    # On disk before the checkpoint of this step: a run killed later keeps every logged point.
    self._tb.flush()
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


def _remove_empty_event_files(directory: str) -> None:
  """Deletes 0-byte TensorBoard event files (left by runs killed before their first flush)."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if name.startswith("events.out.tfevents") and os.path.getsize(path) == 0:
      os.remove(path)


def drop_records_after(path: str, step: int) -> int:
  """Rewrites the metrics.jsonl at `path` without the records of steps > `step` (atomically);
  returns how many were dropped. A torn last line (a write killed midway) is dropped too."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get("step", 0) <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  dropped = len(lines) - len(keep)
  if dropped:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
    logging.info("Dropped %d records after step %d from %s (a run killed after its last "
                 "checkpoint wrote them; the resumed run writes them again).", dropped, step, path)
  return dropped


def read_jsonl(path: str, prefix: str | None = None) -> list[dict]:
  """Reads back `metrics.jsonl` records, optionally only those with the given prefix."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if prefix is None or r["prefix"] == prefix]
