"""Image CoCa pretraining (arXiv 2205.01917).

  --config=configs/coca.py:VARIANT[,runlocal]

VARIANT  base   CoCa-Base (383M): ViT-B/18 at 288px, 12 + 12 text layers, 64k vocabulary
         large  CoCa-Large (787M): ViT-L/18 at 288px
         giant  CoCa (2.1B): ViT-g/18 at 288px, 18 + 18 text layers (tied word embeddings)
         tiny   the `coca_tiny` model on random data (tests and smoke runs; no TensorFlow)
`runlocal` shrinks any variant to a few small steps on this machine.

`base` and `large` follow the paper's recipe: loss 1.0 * contrastive + 2.0 * captioning, Adafactor
(beta1 0.9, beta2 capped at 0.999, decoupled weight decay 0.01), peak lr 8e-4 after a 2% warmup,
then linear decay to zero, 500k steps. One deviation, of scale: the paper's global batch is 65,536
on 2,048 TPUv4 chips; the default here is 4,096 (1/16), which fits a 64-128 chip slice. At a
smaller batch the same schedule sees 1/16 of the examples; to match the paper's example count,
multiply total_steps (and warmup_steps) by 16, or raise `input.batch_size` with the slice.
The input is random data: plug in your own (`config.input`, see README "Config reference").
"""
import ml_collections

from videococa import config_utils
from videococa.models import presets

WD_EXCLUDE = (r"bias$", r"scale$", r"pos_embedding$", r"temporal_embedding$", r"cls_embedding$",
              r"class_embedding$", r"query$", r"logit_scale$")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, variant="tiny", runlocal=False)
  if arg.variant not in ("tiny", "base", "large", "giant"):
    raise ValueError(f"configs/coca.py: unknown variant {arg.variant!r}; use tiny, base, large "
                     "or giant.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model_name = "coca"
  config.model = presets.get(f"coca_{arg.variant}")
  config.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1: all remaining devices.
  config.extensions = ()  # Modules registering project pp ops / loss terms / model hooks.

  config.input = dict(source="random", batch_size=4096, num_frames=1, prefetch=2)
  config.loss = dict(contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.0,
                     vocab_chunk_len=16, terms={})
  total_steps = 500_000
  config.optimizer = dict(
      name="adafactor", lr=8e-4, b1=0.9, b2=0.999, eps=1e-30, weight_decay=0.01,
      adafactor_decay_rate=0.8, grad_clip_norm=1.0, wd_exclude=WD_EXCLUDE, frozen=(),
      warmup_steps=total_steps // 50, decay="linear", end_factor=0.0)
  config.total_steps = total_steps
  config.log_every = 100
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.max_consecutive_nonfinite = 10
  config.peak_tflops = 0.0  # 0: look the accelerator up in trainer.PEAK_TFLOPS.
  config.profile_steps = ""  # 'FIRST,LAST': a JAX profiler trace of those steps -> WORKDIR/profile.
  config.compilation_cache_dir = ""  # A directory: JAX's persistent compilation cache (opt-in).

  if arg.variant == "tiny":
    config.model.dtype = "float32"
    config.input.batch_size = 16
    config.optimizer.update(name="adamw", lr=1e-3, eps=1e-8, weight_decay=1e-4, warmup_steps=5,
                            decay="cosine")
    config.total_steps = 200
    config.log_every = 10
    config.checkpoint_every = 50
  else:
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "dots_no_batch"

  if arg.runlocal:
    config_utils.shrink_for_local_run(config)
  return config
