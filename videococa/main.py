"""The main job behind `./run.sh`: a short CoCa training run on this machine.

  python -m videococa.main [--workdir=workdir] [--quick]
"""
from __future__ import annotations

import os

from absl import app, flags, logging

from videococa import config_utils, train
from videococa.metric_writer import console

_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Where the job writes everything.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke-test size (a minute or two).")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = config_utils.load_config("configs/coca.py:tiny" + (",runlocal" if _QUICK.value else ""))
  workdir = os.path.abspath(os.path.join(_WORKDIR.value, "coca_tiny"))
  summary = train.train(config, workdir)
  console(f"Trained to step {summary['end_step']}: loss {summary['metrics'].get('loss', float('nan')):.4f}\n"
          f"TensorBoard logs: {os.path.join(workdir, 'tensorboard')} "
          f"(tensorboard --logdir {workdir})\nCheckpoints: {os.path.join(workdir, 'checkpoints')}")


if __name__ == "__main__":
  app.run(main)
