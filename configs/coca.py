"""Image CoCa pretraining.

Variants (`--config=configs/coca.py:VARIANT[,runlocal]`):
  tiny          the `coca_tiny` model on random data (tests, smoke runs; no TensorFlow needed)
  shapes_image  a small CoCa on the embedded shapes_video image-text view (the main job's image stage)
  base          CoCa-Base (383M) on random data: plug your data into `config.input`
  large         CoCa-Large (787M), same
`runlocal` shrinks any variant to a few small steps on this machine. Every field can be overridden
on the command line, e.g. `--config.optimizer.lr=1e-4 --config.mesh.fsdp=8`.
"""
import ml_collections

from videococa import config_utils
from videococa.models import presets

SHAPES_TEXT_LEN = 24  # Shapes captions are at most 18 words.
SHAPES_PP = ('decode_image|resize(64)|choose_caption|tokenize({})|keep("frames", "text")'
             .format(SHAPES_TEXT_LEN + 1))
WD_EXCLUDE = (r"bias$", r"scale$", r"pos_embedding$", r"cls_embedding$", r"class_embedding$",
              r"query$", r"logit_scale$")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, variant="tiny", runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model_name = "coca"
  config.model = presets.get("coca_shapes" if arg.variant == "shapes_image" else
                             f"coca_{arg.variant}")
  config.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1: all remaining devices.

  config.input = dict(source="random", batch_size=4096, num_frames=1, fixed=False, prefetch=2)
  # verb_phrase_weight: the verb-phrase loss, used when the input yields `phrases`.
  config.loss = dict(contrastive_weight=1.0, caption_weight=2.0, verb_phrase_weight=1.0,
                     label_smoothing=0.0, vocab_chunk_len=16)
  config.optimizer = dict(
      name="adafactor", lr=8e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
      adafactor_decay_rate=0.8, grad_clip_norm=1.0, wd_exclude=WD_EXCLUDE, frozen=(),
      warmup_steps=10_000, decay="linear", end_factor=0.0)
  config.total_steps = 500_000
  config.log_every = 100
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.max_consecutive_nonfinite = 10
  config.peak_tflops = 0.0  # 0: look the accelerator up in trainer.PEAK_TFLOPS.

  if arg.variant == "shapes_image":
    config.model.max_len = SHAPES_TEXT_LEN
    config.input.update(source="tfds", batch_size=64,
                        data=dict(name="shapes_video/image", split="train", data_dir=None, dir=None),
                        pp=SHAPES_PP, mixture={}, shuffle_buffer=2000, cache=True,
                        num_parallel_calls=-1, tokenizer="{workdir}/tokenizer.model",
                        tokenizer_vocab_size=256)
    config.optimizer.update(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=60,
                            decay="cosine")
    config.total_steps = 600  # ~6 min on a 2-core CPU: the main job's budget.
    config.log_every = 50
    config.checkpoint_every = 200
  elif arg.variant == "tiny":
    config.model.dtype = "float32"
    config.input.batch_size = 16
    config.optimizer.update(name="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=5,
                            decay="cosine")
    config.total_steps = 200
    config.log_every = 10
    config.checkpoint_every = 50
  else:
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "dots_no_batch"

  if arg.runlocal:
    config.input.batch_size = 16 if arg.variant == "shapes_image" else 8
    config.total_steps = 10
    config.log_every = 2
    config.checkpoint_every = 5
    config.optimizer.warmup_steps = 2
  return config
