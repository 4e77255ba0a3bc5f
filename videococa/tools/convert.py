r"""Converts model checkpoints; the first argument names the conversion.

  # open_clip weights (.pt/.pth/.bin state_dict or training checkpoint, or .safetensors) -> a
  # videococa params checkpoint (checkpoint.load_params reads it; its meta has the model config).
  python -m videococa.tools.convert from_open_clip --model=coca_ViT-B-32 \
      --checkpoint=open_clip_model.safetensors --out=/tmp/coca_b32

  # videococa params (a convert output or a training workdir) -> an open_clip state_dict file that
  # open_clip.create_model('coca_ViT-B-32').load_state_dict(torch.load(FILE)) accepts.
  python -m videococa.tools.convert to_open_clip --model=coca_ViT-B-32 --checkpoint=/tmp/coca_b32 \
      --out=/tmp/coca_b32.pt

  # An image CoCa checkpoint -> the VideoCoCa of a config: shared parameters copied, new ones
  # (temporal embeddings / transformer) initialised, ViT positions resized if the image size changed.
  python -m videococa.tools.convert inflate --from=IMAGE_WORKDIR \
      --config=configs/videococa.py:shapes,video=factorized --out=/tmp/video_init

`--model` is an open_clip model name (`openclip.OPENCLIP_PRESETS`) or an open_clip model config
.json. open_clip conversions are exact (reshapes and transposes only).
"""
from __future__ import annotations

import os

import jax
from absl import app, flags, logging

from videococa import cli, config_utils, errors, extensions
from videococa.data import clip_bpe
from videococa.models import coca
from videococa.tools import openclip
from videococa.train import checkpoint, trainer


def from_open_clip(model: str, checkpoint_path: str, out: str) -> None:
  """open_clip weights file -> videococa params checkpoint directory `out` (new or empty)."""
  config = openclip.get_config(model)
  if os.path.exists(out) and os.listdir(out):
    raise errors.ExistingPathError(f"--out={out} exists and is not empty; pass a new directory.")
  params = openclip.to_videococa(openclip.load_state_dict(checkpoint_path), config)
  meta = dict(model_name="coca", model=config.to_dict(), tokenizer=clip_bpe.NAME,
              source=f"open_clip {model} {os.path.abspath(checkpoint_path)}")
  checkpoint.save_params(out, params, meta)
  logging.info("Wrote the params of open_clip %s to %s.", model, out)


def to_open_clip(model: str, checkpoint_path: str, out: str) -> None:
  """videococa params (convert output or training workdir) -> open_clip state_dict file `out`."""
  config = openclip.get_config(model)
  openclip.check_state_dict_path(out)
  params, _ = checkpoint.load_params(checkpoint_path)
  openclip.save_state_dict(openclip.to_openclip(params, config), out)
  logging.info("Wrote an open_clip %s state_dict to %s.", model, out)


def inflate(source: str, config_spec: str, out: str) -> dict[str, list[str]]:
  """Image CoCa checkpoint `source` -> params of the model of `config_spec` (a VideoCoCa), saved
  to `out`; prints which parameters were copied, resized and newly initialised."""
  config = config_utils.load_config(config_spec)
  extensions.load(config)
  module = trainer.load_model_module(config.model_name)
  model = module.Model(**config.model)
  init = jax.jit(model.init)(jax.random.key(config.seed),
                             *coca.init_inputs(config.model, 1, config.input.num_frames))["params"]
  params, report = module.load(jax.device_get(jax.tree.map(
      lambda x: getattr(x, "value", x), init, is_leaf=lambda x: hasattr(x, "value"))),
                               source, config.model)
  rows = [(status, path) for status in ("new", "resized", "copied") for path in report[status]]
  print("\n".join(f"{status:8s} {path}" for status, path in rows))
  print(f"{len(report['copied'])} copied, {len(report['resized'])} resized, {len(report['new'])} "
        f"new; {len(report['unused'])} checkpoint parameters unused: {report['unused']}")
  checkpoint.save_params(out, params, dict(model_name=config.model_name,
                                           model=config.model.to_dict(),
                                           source=f"inflated from {os.path.abspath(source)}"))
  return report


def _define_flags():
  flags.DEFINE_string("model", None, "open_clip model name or model config .json file.")
  flags.DEFINE_string("checkpoint", None, "Input checkpoint file or directory.")
  flags.DEFINE_string("out", None, "Output file or directory.")
  flags.DEFINE_string("from", None, "inflate: the image CoCa checkpoint (workdir or directory).")
  flags.DEFINE_string("config", None, "inflate: the video config, FILE[:ARG].")


def _flags(command: str, *names: str) -> list[str]:
  """Values of the flags `names`, which `command` needs."""
  missing = [f"--{name}" for name in names if flags.FLAGS[name].value is None]
  if missing:
    raise app.UsageError(f"{command} needs {', '.join(missing)}.")
  return [flags.FLAGS[name].value for name in names]


# Subcommand -> function of its name that reads its flags and runs it.
COMMANDS = {
    "from_open_clip": lambda cmd: from_open_clip(*_flags(cmd, "model", "checkpoint", "out")),
    "to_open_clip": lambda cmd: to_open_clip(*_flags(cmd, "model", "checkpoint", "out")),
    "inflate": lambda cmd: inflate(*_flags(cmd, "from", "config", "out")),
}


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"Usage: python -m videococa.tools.convert {{{'|'.join(COMMANDS)}}} "
                         f"--flags; got arguments {argv[1:]}.")
  COMMANDS[argv[1]](argv[1])


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
