"""`python -m videococa.train --config=FILE[:ARG] --workdir=DIR`: see `videococa.train.loop`."""
from absl import flags

from videococa import cli
from videococa.train import loop

if __name__ == "__main__":
  loop.define_flags()
  flags.mark_flags_as_required(["config"])
  cli.run(loop.main)
