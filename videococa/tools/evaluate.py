r"""Runs the evaluators of `config.evals` on a checkpoint.

  python -m videococa.tools.evaluate --config=configs/coca.py:tiny --workdir=/tmp/w \
      [--checkpoint=STEP]

Reads the parameters of checkpoint STEP (default: the latest) of `WORKDIR` (a training workdir,
its checkpoints/ folder or a `videococa.tools.convert` output), runs every `config.evals` evaluator
(see `videococa/evaluators/__init__.py`) and writes `WORKDIR/evals/NAME_step{STEP}.json` (+
`NAME_latest.json`, example frame strips), TensorBoard scalars `eval/NAME/...` and
`WORKDIR/metrics.jsonl` lines at the checkpoint's step, then prints a metrics table.
"""
from __future__ import annotations

from typing import Any

from absl import app, flags, logging
import flax.linen as nn
from flax import traverse_util
import jax
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from videococa import cli, errors, evaluators, extensions
from videococa.evaluators import metrics
from videococa.models import coca
from videococa.train import checkpoint, distributed, loop as train, metric_writer, sharding
from videococa.train import validate
from videococa.train import trainer as trainer_lib


def define_flags() -> None:
  """train's `--config` and `--workdir`, plus `--checkpoint` (entry points only)."""
  train.define_flags()
  flags.DEFINE_integer("checkpoint", None, "Step of the checkpoint to evaluate (default: latest).")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def load_params(model, config: ml_collections.ConfigDict, mesh, workdir: str,
                step: int | None = None) -> tuple[Any, int]:
  """Parameters of checkpoint `step` (latest if None) of `workdir`, sharded as in training (from
  their logical axes), and the checkpoint's step (its meta's 'step'; 0 for parameters-only
  checkpoints, e.g. from `checkpoint.save_params` or `videococa.tools.convert`)."""
  params, meta = checkpoint.load_params(workdir, step, sharding=NamedSharding(mesh, P()))
  inputs = coca.init_inputs(config.model, 1, config.input.num_frames)
  with sharding.use_mesh(mesh):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs)["params"])
  expected, found = _shapes(nn.unbox(boxed)), _shapes(params)
  if expected != found:
    problems = sorted(f"{k}: checkpoint {found.get(k)}, model {expected.get(k)}"
                      for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    raise errors.UserError(f"The checkpoint in {workdir} does not match config.model "
                           f"({len(problems)} mismatches, e.g. {problems[0]}); use the config it "
                           "was trained with.")
  step = step if step is not None else int(meta.get("step", 0))
  return jax.device_put(params, sharding.logical_shardings(boxed, mesh)), step


def summary_table(results: dict[str, dict]) -> str:
  """Markdown table of every evaluator's top-level metrics (None, e.g. METEOR without Java: n/a)."""
  rows = [dict(eval=name, metric=key, value=value) for name, result in results.items()
          for key, value in result.items() if key not in ("step", "seconds")
          and (value is None or key in evaluators.scalars({key: value}))]
  return metrics.format_table(rows, ["eval", "metric", "value"])


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
             ) -> dict[str, dict]:
  """Evaluates checkpoint `step` (latest if None) of `workdir` with every `config.evals` entry;
  returns {name: result} (see `evaluators.run_all`)."""
  if not config.get("evals"):
    raise errors.UserError("config.evals is empty: add evaluators (see "
                           "videococa/evaluators/__init__.py).")
  extensions.load(config)
  validate.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  model = trainer_lib.load_model_module(config.model_name).Model(**config.model)
  evals = evaluators.build_all(config, model=model, mesh=mesh, workdir=workdir)
  params, step = load_params(model, config, mesh, workdir, step)
  writer = metric_writer.MetricWriter(workdir)
  try:
    results = evaluators.run_all(evals, params, step, writer, workdir)
  finally:
    writer.close()
  metric_writer.console(f"Checkpoint step {step} of {workdir}:\n{summary_table(results)}")
  return results


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  distributed.initialize()
  evaluate(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.checkpoint)


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config"])
  cli.run(main)
