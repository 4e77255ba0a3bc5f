r"""Train-step throughput: samples/s, TFLOP per step, MFU / HFU, and the ratio to open_clip's CoCa.

  python -m videococa.tools.bench_train --preset=openclip_coca_vit_b32 --batch_size=256 [--steps=20]
      [--dtype=bfloat16] [--remat=none] [--attention=auto] [--fsdp=1] [--peak_tflops=0]

Random data, AdamW, the model of a `videococa/models/presets.py` preset, compiled with the same
sharded train step as training. FLOPs are counted from the traced step (`videococa.train.flops`):
model FLOPs (3x the forward matmuls; MFU) and hardware FLOPs (rematerialisation included; HFU);
XLA's own estimate, which counts each scanned layer stack once, is printed beside them. The
open_clip reference figures were measured on one H100 80GB (bf16 autocast, random data, AdamW;
`../shared/SPEC.md`); compare ratios only on that GPU. open_clip's MFU is restated with our count
of the same model at the same batch, so the two MFUs are like for like.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import flags

from videococa import cli, config_utils
from videococa.data import inputs
from videococa.models import presets
from videococa.train import sharding, trainer as trainer_lib

# open_clip 3.3.0, torch 2.11, one H100 80GB: (samples/s, batch) per preset.
OPENCLIP_H100 = {"openclip_coca_vit_b32": (919.0, 256), "openclip_coca_vit_l14": (304.0, 128)}
H100_PEAK_FLOPS = trainer_lib.PEAK_TFLOPS["H100"] * 1e12

_PRESET = flags.DEFINE_string("preset", "openclip_coca_vit_b32", "Model preset.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after one compile + one warm-up).")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
_REMAT = flags.DEFINE_string("remat", "none", "Remat policy.")
_ATTENTION = flags.DEFINE_string("attention", "auto", "Attention implementation.")
_FSDP = flags.DEFINE_integer("fsdp", 1, "FSDP mesh axis size (data fills the rest).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s per device (0: look it up).")


def benchmark(preset: str, batch_size: int, steps: int, dtype: str, remat: str, attention: str,
              fsdp: int, peak_tflops: float = 0.0) -> dict[str, float]:
  """Times `steps` train steps; returns samples/s, step time, TFLOP per step, MFU and HFU."""
  config = config_utils.load_config("configs/coca.py:tiny")
  config.model = presets.get(preset)
  config.model.update(dtype=dtype, remat_policy=remat, attention_impl=attention)
  config.input.batch_size = batch_size
  config.mesh = dict(data=-1, fsdp=fsdp, tensor=1)
  config.optimizer.update(name="adamw", warmup_steps=0, decay="constant")
  config.peak_tflops = peak_tflops
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state()
  model = config.model
  local = sharding.local_batch_size(batch_size, trainer.mesh)
  batch = sharding.put_batch(inputs.random_batch(
      np.random.default_rng(0), local, 1, model.vision.image_size, model.max_len + 1,
      model.vocab_size), trainer.mesh)
  state, metrics = trainer.step(state, batch)  # Compile + warm-up.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  flops = trainer.flops_per_step()
  peak = trainer_lib.peak_flops_per_device(config)
  devices = trainer.mesh.size
  result = dict(samples_per_s=batch_size / step_time, step_time_s=step_time,
                model_tflop_per_step=flops["model"] * devices / 1e12,
                hardware_tflop_per_step=flops["hardware"] * devices / 1e12,
                xla_tflop_per_step=(trainer.xla_flops_per_step() or 0.0) * devices / 1e12)
  if peak:
    result["mfu"] = flops["model"] / step_time / peak
    result["hfu"] = flops["hardware"] / step_time / peak
  if preset in OPENCLIP_H100:
    samples_per_s, _ = OPENCLIP_H100[preset]
    result["ratio_to_open_clip_h100"] = result["samples_per_s"] / samples_per_s
    # open_clip's throughput times our model FLOPs per sample (the count scales with the batch).
    per_sample = flops["model"] * devices / batch_size
    result["open_clip_h100_mfu"] = per_sample * samples_per_s / H100_PEAK_FLOPS
  return result


def main(argv):
  del argv
  result = benchmark(_PRESET.value, _BATCH.value, _STEPS.value, _DTYPE.value, _REMAT.value,
                     _ATTENTION.value, _FSDP.value, _PEAK.value)
  device = jax.devices()[0]
  print(f"{_PRESET.value} batch {_BATCH.value} on {jax.device_count()} x {device.device_kind}:")
  for key, value in result.items():
    print(f"  {key:26s} {value:.4g}")
  if "ratio_to_open_clip_h100" in result and "H100" not in device.device_kind:
    print("  (the open_clip reference is from an H100: the ratio is meaningful only there)")


if __name__ == "__main__":
  cli.run(main)
