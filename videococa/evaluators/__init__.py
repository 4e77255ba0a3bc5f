r"""Zero-shot evaluators (classification, retrieval, captioning): registry, scheduling, output.

Configured in `config.evals`, one entry per evaluator, used during training and by
`python -m videococa.tools.evaluate --config=... --workdir=DIR [--checkpoint=STEP]`:

  config.evals = dict(
      motion=dict(type='classification', every=1000, batch_size=64,
                  data=dict(name='shapes_video/video', split='test'),
                  pp='sample_frames(8)|decode_video|resize(64)|keep("frames", "label")',
                  class_names=shapes.MOTION_CLASS_NAMES, templates=shapes.MOTION_PROMPT_TEMPLATES),
      retrieval=dict(type='retrieval', every=1000, batch_size=64, data=..., pp=... keep 'captions'),
      captions=dict(type='captioning', every=0, batch_size=64, data=..., pp=... keep 'id' and
                    'captions', decode=dict(method='beam', beam_size=4),
                    baseline_captions_from=dict(name='shapes_video/video', split='train')))

Fields of every type: `common.COMMON_FIELDS` (type, every: steps, 0 = only at the end of training;
data, pp: an eval pp string without tokenize (evaluators tokenize); batch_size: global). The
type-specific ones are documented in `classification.py`, `retrieval.py` and `captioning.py`.

In a training loop:

  evals = evaluators.build_all(config, model=trainer.model, mesh=trainer.mesh, workdir=workdir)
  ...
  evaluators.run_all(evaluators.due(evals, step, config.total_steps), state.params, step, writer,
                     workdir)

`run_all` writes, per evaluator, the scalars (nested dicts flattened, e.g.
`eval/NAME/per_class_accuracy/growing`; None values skipped) through the `MetricWriter`, and the
whole result as JSON to `workdir/evals/NAME_step{STEP}.json` and `NAME_latest.json` (process 0).
Every JSON holds name, type, step, seconds, config (the evaluator's config.evals entry, defaults
filled in) and the evaluator's result.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from videococa.evaluators import captioning, classification, common, retrieval

REGISTRY: dict[str, type[common.Evaluator]] = {
    "classification": classification.Classification,
    "retrieval": retrieval.Retrieval,
    "captioning": captioning.Captioning,
}


def build(name: str, eval_config: Mapping[str, Any], *, model, mesh: jax.sharding.Mesh,
          tokenizer, **kwargs) -> common.Evaluator:
  """The evaluator `config.evals[name]` for `model` on `mesh`. `kwargs` go to its class (e.g.
  `generate_fn` for captioning)."""
  if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    raise ValueError(f"config.evals.{name}: evaluator names are used in file names; use letters, "
                     "digits, '_', '.' and '-'.")
  kind = eval_config.get("type")
  if kind not in REGISTRY:
    raise ValueError(f"config.evals.{name}.type={kind!r}; choose one of {sorted(REGISTRY)}.")
  return REGISTRY[kind](name, eval_config, model=model, mesh=mesh, tokenizer=tokenizer, **kwargs)


def build_all(config: ml_collections.ConfigDict, *, model, mesh: jax.sharding.Mesh,
              workdir: str | None = None, tokenizer=None) -> list[common.Evaluator]:
  """Evaluators of all `config.evals` (none: []). The tokenizer defaults to the training one
  (`pipeline.get_tokenizer(config, workdir)`)."""
  evals = config.get("evals") or {}
  if not evals:
    return []
  if tokenizer is None:
    from videococa.data import pipeline  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    tokenizer = pipeline.get_tokenizer(config, workdir)
  return [build(name, evals[name], model=model, mesh=mesh, tokenizer=tokenizer) for name in evals]


def due(evaluators: Sequence[common.Evaluator], step: int, total_steps: int
        ) -> list[common.Evaluator]:
  """The evaluators to run after `step`: those whose `every` divides it; all at the last step."""
  return [e for e in evaluators if step == total_steps or (e.every and step % e.every == 0)]


def scalars(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """Numbers of `result`, nested dicts flattened to 'a/b' names; None, bools, strings, lists and
  private ('_') keys skipped."""
  out = {}
  for key, value in result.items():
    if str(key).startswith("_"):
      continue
    if isinstance(value, Mapping):
      out.update(scalars(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)):
      out[f"{prefix}{key}"] = float(value)
  return out


def _json_default(value):
  if isinstance(value, (np.integer, np.floating, np.bool_)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


def _write_json(path: str, data: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def save(result: Mapping[str, Any], images: Mapping[str, np.ndarray], directory: str) -> None:
  """Writes `images` (PNGs, paths relative to `directory`) and `result` as
  `{name}_step{step}.json` and `{name}_latest.json` into `directory`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for path, image in images.items():
    full = os.path.join(directory, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(full)
  os.makedirs(directory, exist_ok=True)
  _write_json(os.path.join(directory, f"{result['name']}_step{result['step']}.json"), result)
  _write_json(os.path.join(directory, f"{result['name']}_latest.json"), result)


def run_all(evaluators: Sequence[common.Evaluator], params, step: int, writer=None,
            workdir: str | None = None) -> dict[str, dict]:
  """Runs `evaluators` on `params` (on every process), writes scalars with `writer` (a
  `MetricWriter`, prefix 'eval/NAME') and JSON + images into `workdir/evals` (process 0).

  Returns {name: result}: the evaluator's result plus name, type, step, seconds and config (its
  config.evals entry, defaults filled in).
  """
  results = {}
  for evaluator in evaluators:
    start = time.perf_counter()
    result = evaluator.run(params)
    images = result.pop(common.IMAGES, {})
    seconds = time.perf_counter() - start
    if writer is not None:
      writer.write(step, {**scalars(result), "seconds": seconds}, prefix=f"eval/{evaluator.name}")
    result = dict(name=evaluator.name, type=evaluator.type, step=int(step), seconds=seconds,
                  config=evaluator.cfg, **result)
    if workdir is not None and jax.process_index() == 0:
      save(result, images, os.path.join(workdir, "evals"))
    results[evaluator.name] = result
  return results
