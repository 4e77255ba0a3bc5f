"""VideoCoCa: an image CoCa adapted to video (arXiv 2212.04979).

  --config=configs/videococa.py:DATA[,video=VARIANT][,mode=MODE][,init=PATH][,model=SIZE]
                                    [,negatives=False][,phrases=False][,fresh_text][,patch_skip=False]
                                    [,frame_diff][,flow=False][,runlocal]

DATA    shapes     the embedded shapes_video clips (16 frames, 64x64; 8 sampled), zero-shot evals on
                   the held-out `test` compositions (motion classification, retrieval, captioning)
        videocc3m  VideoCC3M-style pretraining at 8 frames: point `config.input.data.dir` at your
                   ingested clips (python -m videococa.data.ingest ...) and `config.input.tokenizer`
                   at a 64k SentencePiece model
VARIANT attentional_pooler (default) | factorized | joint_space_time | mean_pool
MODE    lit (default) | ft | frozen | frozen_ft (frozen for the first quarter, then ft)
PATH    checkpoint to start from (an image CoCa workdir or a `videococa.convert` output);
        inflated as in `python -m videococa.convert inflate`
SIZE    base (default) | large  (videocc3m only)
negatives=False  shapes without the verb-swapped hard-negative captions (on by default)
phrases=False    shapes without the verb-phrase loss (on by default): each clip also picks its
                 caption's motion phrase ("slides left") among the same phrase for the 6 other
                 motions (`losses.verb_phrase_loss`; README, "Results of the default run")
fresh_text       shapes with the text tower (token embedding, encoder, projection) trained from
                 scratch instead of loaded from PATH (`config.init_dont_load`)
patch_skip=False the poolers read the ViT's output tokens only; by default they also read its local
                 patch features through a zero-initialised projection (`model.video.patch_skip`,
                 `videococa.models.video.PatchSkip`; README, "Results of the default run")
frame_diff       the patch skip also reads the frame differences of the patch features (TSN's RGB
                 difference; `model.video.frame_diff`): off by default, as the normal flow made it
                 redundant (README, "Results of the default run")
flow=False       the patch skip without each patch's normal flow to the next frame (on by default;
                 `model.video.normal_flow`, `videococa.models.video.normal_flow`: a motion estimate
                 that does not depend on colour)
"""
import os

import ml_collections

from videococa import config_utils
from videococa.data import shapes

_IMAGE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coca.py")
NUM_FRAMES = 8
SHAPES_VIDEO = dict(name="shapes_video/video", data_dir=None, dir=None)
# Tokens of a tokenized motion phrase, [BOS, ..., EOS, PAD...]: the longest phrase takes 9 with the
# shapes tokenizer (the tokenizer keeps EOS when it truncates).
VERB_PHRASE_LEN = 12


def _shapes(config, arg):
  """The shapes_video recipe: the small shapes model, 8 of the 16 frames, zero-shot test evals."""
  text_len = config.model.max_len
  # Verb-swapped hard negatives: each clip's caption rewritten for the 6 other motions (see
  # `shapes.motion_negatives`). Random batches rarely hold two clips that differ only in motion,
  # so without them the contrastive embedding can match captions on appearance alone.
  # The verb-phrase loss (Momeni et al. 2023) asks for the motion alone, in the caption's words.
  texts, kept = "", '"frames", "text"'
  if arg.negatives:
    texts += (f'motion_negatives|tokenize({text_len + 1}, key="negative_captions", '
              'out="negatives")|')
    kept += ', "negatives"'
  if arg.phrases:
    texts += (f'motion_phrases|tokenize({VERB_PHRASE_LEN}, key="phrase_captions", '
              'out="phrases")|')
    kept += ', "phrases"'
  config.input.update(
      data=dict(SHAPES_VIDEO, split="train"), cache=True, batch_size=32,
      hard_negatives=len(shapes.MOTIONS) - 1 if arg.negatives else 0,
      verb_phrases=len(shapes.MOTIONS) if arg.phrases else 0,
      pp=(f'sample_frames({NUM_FRAMES}, mode="random_segment")|decode_video|resize(64)|choose_caption|'
          f'tokenize({text_len + 1})|{texts}keep({kept})'))
  eval_pp = (f'sample_frames({NUM_FRAMES})|decode_video|resize(64)|'
             'keep("frames", "captions", "label", "id")')
  test = dict(SHAPES_VIDEO, split="test")
  config.evals = dict(
      motion=dict(type="classification", every=0, batch_size=100, data=test, pp=eval_pp,
                  class_names=list(shapes.MOTION_CLASS_NAMES),
                  templates=list(shapes.MOTION_PROMPT_TEMPLATES), label_key="label"),
      retrieval=dict(type="retrieval", every=0, batch_size=100, data=test, pp=eval_pp),
      captioning=dict(type="captioning", every=0, batch_size=100, data=test, pp=eval_pp,
                      decode=dict(method="greedy", max_new_tokens=text_len), show_examples=12,
                      baseline_captions_from=dict(SHAPES_VIDEO, split="train")),
  )
  if arg.fresh_text:  # LiT's setting: the text tower trained from scratch (README, "Results").
    config.init_dont_load = (r"^token_embedding/", r"^text_encoder/", r"^text_proj/")
  config.optimizer.update(lr=1e-3, warmup_steps=60, decay="cosine")
  config.total_steps = 600  # ~7 min on a 2-core CPU: the main job's budget.
  config.log_every = 50
  config.checkpoint_every = 200
  if arg.runlocal:
    config.total_steps = 20
    config.log_every = 5
    for e in config.evals.values():
      e.batch_size = 20


def _videocc3m(config, arg):
  """VideoCC3M-style pretraining of CoCa-Base/Large at 8 frames of 288px."""
  from videococa.models import presets  # pylint: disable=g-import-not-at-top
  config.model = presets.get(f"coca_{arg.model}")
  config.model.update(dtype="bfloat16", remat_policy="dots_no_batch")
  size, text_len = config.model.vision.image_size, config.model.max_len
  config.input.update(
      data=dict(name=None, dir="/path/to/videocc3m_tfds", split="train", data_dir=None),
      batch_size=1024, cache=False, tokenizer="/path/to/spm_64k.model", tokenizer_vocab_size=0,
      pp=(f'sample_frames({NUM_FRAMES}, mode="random_segment")|decode_video|'
          f'random_resized_crop({size}, scale=(0.5, 1.0))|choose_caption|'
          f'tokenize({text_len + 1})|keep("frames", "text")'))
  config.optimizer.update(name="adafactor", lr=1e-4, weight_decay=0.01, warmup_steps=1000,
                          decay="linear")
  config.total_steps = 100_000
  config.log_every = 100
  config.checkpoint_every = 2000
  config.evals = {}  # Add e.g. MSR-VTT retrieval / K400 classification on ingested data.
  if arg.runlocal:
    config.input.batch_size = 8
    config.total_steps = 10


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, variant="shapes", video="attentional_pooler", mode="lit",
                               init="", model="base", negatives=True, phrases=True,
                               fresh_text=False, patch_skip=True, frame_diff=False, flow=True,
                               runlocal=False)
  config = config_utils.load_config(f"{_IMAGE_CONFIG}:shapes_image" +
                                    (",runlocal" if arg.runlocal else ""))
  config.training_mode = arg.mode
  config.frozen_ft_boundary = 0
  config.init_from = arg.init
  config.init_dont_load = ()  # Regexes of parameters kept at their fresh init (see coca.load).
  if arg.init:  # The image model's tokenizer; never retrain one (its ids would not match).
    config.input.tokenizer = os.path.join(arg.init, "tokenizer.model")
    config.input.tokenizer_vocab_size = 0
  config.input.num_frames = NUM_FRAMES
  if arg.variant == "shapes":
    _shapes(config, arg)
  elif arg.variant == "videocc3m":
    _videocc3m(config, arg)
  else:
    raise ValueError(f"configs/videococa.py: unknown data {arg.variant!r}; use shapes or videocc3m.")
  config.model.video = dict(variant=arg.video, num_frames=NUM_FRAMES, temporal_depth=2,
                            patch_skip=arg.patch_skip,
                            frame_diff=arg.patch_skip and arg.frame_diff,
                            normal_flow=arg.patch_skip and arg.flow,
                            temporal_embedding="sincos" if arg.video == "attentional_pooler" else False)
  if arg.mode == "frozen_ft":
    config.frozen_ft_boundary = config.total_steps // 4
  return config
