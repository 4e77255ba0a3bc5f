"""VideoCoCa: a pretrained image CoCa adapted to video (arXiv 2212.04979).

  --config=configs/videococa.py:DATA[,video=VARIANT][,mode=MODE][,init=PATH][,model=SIZE]
                                    [,temporal=KIND][,runlocal]

DATA     videocc3m  VideoCC3M-style pretraining at 8 frames: point `config.input.data.dir` at your
                    ingested clips (python -m videococa.data.ingest ...) and
                    `config.input.tokenizer` at the image model's SentencePiece model (or give
                    init=PATH, which brings it)
         tiny       the `coca_tiny` model on random 4-frame clips (tests and smoke runs)
VARIANT  attentional_pooler (default) | factorized | joint_space_time | mean_pool
MODE     lit (default; the paper's best) | ft | frozen | frozen_ft (frozen for the first quarter,
         then ft)
PATH     checkpoint to start from (an image CoCa workdir or a `videococa.tools.convert` output),
         inflated as in `python -m videococa.tools.convert inflate`; its tokenizer.model is used
SIZE     base (default) | large
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


def video_model(variant: str, num_frames: int, temporal: str = "none") -> dict:
  """`config.model.video` for `variant` (`temporal` applies to the attentional pooler only)."""
  if temporal not in TEMPORAL:
    raise ValueError(f"configs/videococa.py: temporal={temporal!r}; use one of {list(TEMPORAL)}.")
  return dict(variant=variant, num_frames=num_frames, temporal_depth=4,
              temporal_embedding=TEMPORAL[temporal] if variant == "attentional_pooler" else False)


def apply_video_options(config: ml_collections.ConfigDict, arg) -> None:
  """The options every VideoCoCa recipe shares: training mode, init checkpoint, frame count."""
  config.training_mode = arg.mode
  config.frozen_ft_boundary = 0
  config.init_from = arg.init
  config.init_dont_load = ()  # Regexes of parameters kept at their fresh init (see coca.load).
  if arg.init:  # The image model's tokenizer; never retrain one (its ids would not match).
    config.input.tokenizer = os.path.join(arg.init, "tokenizer.model")
    config.input.tokenizer_vocab_size = 0


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, variant="videocc3m", video="attentional_pooler", mode="lit",
                               init="", model="base", temporal="none", runlocal=False)
  if arg.variant not in ("videocc3m", "tiny"):
    raise ValueError(f"configs/videococa.py: unknown data {arg.variant!r}; use videocc3m or tiny.")
  size = "tiny" if arg.variant == "tiny" else arg.model
  config = config_utils.load_config(
      f"{_IMAGE_CONFIG}:{size}" + (",runlocal" if arg.runlocal else ""))
  num_frames = 4 if arg.variant == "tiny" else NUM_FRAMES
  config.input.num_frames = num_frames
  config.model.video = video_model(arg.video, num_frames, arg.temporal)
  if arg.variant == "videocc3m":
    image_size, text_len = config.model.vision.image_size, config.model.max_len
    config.input.update(
        source="tfds", batch_size=1024, cache=False, tokenizer="/path/to/spm_64k.model",
        tokenizer_vocab_size=0,
        data=dict(name=None, dir="/path/to/videocc3m_tfds", split="train", data_dir=None),
        pp=(f'sample_frames({num_frames}, mode="random_segment")|decode_video|'
            f'random_resized_crop({image_size}, scale=(0.5, 1.0))|choose_caption|'
            f'tokenize({text_len + 1})|keep("frames", "text")'))
    config.optimizer.update(lr=1e-4, warmup_steps=1000, decay="linear")
    config.total_steps = 100_000
    config.checkpoint_every = 2000
    config.evals = {}  # Add e.g. MSR-VTT retrieval / K400 classification on ingested data.
    if arg.runlocal:
      config.input.batch_size = 8
      config.total_steps = 10
  else:
    config.total_steps = min(config.total_steps, 40)
  apply_video_options(config, arg)
  if arg.mode == "frozen_ft":
    config.frozen_ft_boundary = config.total_steps // 4
  return config
