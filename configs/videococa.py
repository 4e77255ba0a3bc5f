"""VideoCoCa: a pretrained image CoCa adapted to video (arXiv 2212.04979).

  --config=configs/videococa.py:DATA[,init=PATH][,data=DIR][,video=VARIANT][,mode=MODE]
                                    [,model=SIZE][,temporal=KIND][,runlocal]

DATA     videocc3m  VideoCC3M-scale pretraining at 8 frames (batch 1024, 100k steps)
         finetune   fine-tuning on your own ingested video-caption dataset (batch 128, 5k steps)
         tiny       the `coca_tiny` model on random 4-frame clips (tests and smoke runs)
PATH     the image CoCa to start from: a `videococa.tools.convert from_open_clip` output (open_clip
         weights) or an image CoCa training workdir. Its model config, pixel normalisation and
         tokenizer come with it (`config_utils.init_from_checkpoint`): open_clip weights train
         with CLIP's BPE tokenizer and CLIP's mean/std without any other flag. Its parameters are
         inflated as in `python -m videococa.tools.convert inflate`.
DIR      the training data: a dataset folder written by `python -m videococa.data.ingest video`
         (`config.input.data.dir`; split 'train')
VARIANT  attentional_pooler (default) | factorized | joint_space_time | mean_pool
MODE     lit (default; the paper's best) | ft | frozen | frozen_ft (frozen for the first quarter,
         then ft)
SIZE     base (default) | large: the model when PATH does not bring one
KIND     none (default) | zeros | sincos: a learned per-frame embedding added to the attentional
         pooler's keys, started at zero or at a sin-cos code of the frame index. Not in the paper
         (whose default variant adds no parameters): a deviation, off by default.

The paper's recipe is the default: the attentional-pooler variant feeds all frames' tokens to the
image model's poolers and adds no parameter, so the VideoCoCa's parameters are exactly the image
CoCa's (tests/test_configs.py checks it). LiT freezes the image encoder.
"""
import os

import ml_collections

from videococa import config_utils

_IMAGE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coca.py")
NUM_FRAMES = 8
TEMPORAL = {"none": False, "zeros": True, "sincos": "sincos"}
# (global batch, steps, peak lr, warmup steps) per DATA.
SCHEDULES = {"videocc3m": (1024, 100_000, 1e-4, 1000), "finetune": (128, 5000, 1e-5, 250)}


def video_model(variant: str, num_frames: int, temporal: str = "none") -> dict:
  """`config.model.video` for `variant` (`temporal` applies to the attentional pooler only)."""
  if temporal not in TEMPORAL:
    raise ValueError(f"configs/videococa.py: temporal={temporal!r}; use one of {list(TEMPORAL)}.")
  return dict(variant=variant, num_frames=num_frames, temporal_depth=4,
              temporal_embedding=TEMPORAL[temporal] if variant == "attentional_pooler" else False)


def apply_video_options(config: ml_collections.ConfigDict, arg) -> None:
  """The options every VideoCoCa recipe shares: training mode and which parameters to load."""
  config.training_mode = arg.mode
  config.frozen_ft_boundary = 0
  config.init_from = arg.init
  config.init_dont_load = ()  # Regexes of parameters kept at their fresh init (see coca.load).


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, variant="videocc3m", video="attentional_pooler", mode="lit",
                               init="", data="/path/to/ingested_videos", model="base",
                               temporal="none", runlocal=False)
  if arg.variant not in ("videocc3m", "finetune", "tiny"):
    raise ValueError(f"configs/videococa.py: unknown data {arg.variant!r}; use videocc3m, "
                     "finetune or tiny.")
  size = "tiny" if arg.variant == "tiny" else arg.model
  config = config_utils.load_config(
      f"{_IMAGE_CONFIG}:{size}" + (",runlocal" if arg.runlocal else ""))
  apply_video_options(config, arg)
  if arg.init:
    config_utils.init_from_checkpoint(config, arg.init)
  num_frames = 4 if arg.variant == "tiny" else NUM_FRAMES
  config.input.num_frames = num_frames
  config.model.video = video_model(arg.video, num_frames, arg.temporal)
  if arg.variant == "tiny":
    config.total_steps = min(config.total_steps, 40)
  else:
    image_size, text_len = config.model.vision.image_size, config.model.max_len
    batch_size, steps, lr, warmup = SCHEDULES[arg.variant]
    config.input.update(
        source="tfds", batch_size=batch_size, cache=False,
        data=dict(name=None, dir=arg.data, split="train", data_dir=None),
        # Resized as PIL / open_clip do (antialiased bicubic); the model normalises the pixels.
        pp=(f'sample_frames({num_frames}, mode="random_segment")|decode_video|'
            f'random_resized_crop({image_size}, scale=(0.5, 1.0), method="bicubic", '
            f'antialias=True)|choose_caption|tokenize({text_len + 1})|keep("frames", "text")'))
    if not arg.init:
      config.input.update(tokenizer="/path/to/spm_64k.model", tokenizer_vocab_size=0)
    config.optimizer.update(lr=lr, warmup_steps=warmup, decay="linear")
    config.total_steps = steps
    config.checkpoint_every = 2000 if arg.variant == "videocc3m" else 500
    # Zero-shot evaluation on ingested benchmarks: configs/zeroshot.py (or add entries here).
    config.evals = {}
    if arg.runlocal:  # Again: the schedule above replaced the image config's shrunk one.
      config_utils.shrink_for_local_run(config)
  if arg.mode == "frozen_ft":
    config.frozen_ft_boundary = config.total_steps // 4
  return config
