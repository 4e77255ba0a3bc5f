"""The shapes project's video stage: VideoCoCa learning motion on the embedded shapes_video clips.

  --config=configs/proj/shapes/videococa.py[:video=VARIANT][,mode=MODE][,init=PATH]
      [,negatives=False][,phrases=False][,fresh_text][,patch_skip=False][,frame_diff][,flow=False]
      [,runlocal]

16-frame 64x64 clips, 8 sampled; zero-shot evals on the held-out `test` compositions (motion
classification, retrieval, captioning). VARIANT, MODE and PATH as in configs/videococa.py.
On top of the VideoCoCa paper's recipe this project turns on its own deviations, each a switch
(docs/shapes_motion_study.md has what each brings):
negatives=False  no verb-swapped hard-negative captions (`motion_negatives`)
phrases=False    no verb-phrase loss (Momeni et al. 2023): each clip also picks its caption's motion
                 phrase ("slides left") among the same phrase for the 6 other motions
patch_skip=False the poolers read the ViT's output tokens only; by default they also read its local
                 patch features through a zero-initialised projection (the `patch_skip` adapter)
frame_diff       (with the patch skip) it also reads the patch features' frame differences (TSN's
                 RGB difference); off by default
flow=False       the patch skip without each patch's normal flow to the next frame (a colour-blind
                 motion estimate)
fresh_text       the text tower (token embedding, encoder, projection) trained from scratch instead
                 of loaded from PATH (`config.init_dont_load`)
The attentional pooler also gets a learned temporal embedding started at a sin-cos frame code.
"""
import os

from videococa import config_utils
from videococa.projects.shapes import scenes

_HERE = os.path.dirname(os.path.abspath(__file__))
_VIDEOCOCA = config_utils.import_config_file(
    os.path.join(os.path.dirname(os.path.dirname(_HERE)), "videococa.py"))
NUM_FRAMES = 8
SHAPES_VIDEO = dict(name="shapes_video/video", data_dir=None, dir=None)
# Tokens of a tokenized motion phrase, [BOS, ..., EOS, PAD...]: the longest phrase takes 9 with the
# shapes tokenizer (the tokenizer keeps EOS when it truncates).
VERB_PHRASE_LEN = 12
EXTENSIONS = ("videococa.projects.shapes.pp_ops", "videococa.projects.shapes.losses",
              "videococa.projects.shapes.patch_skip")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, video="attentional_pooler", mode="lit", init="",
                               negatives=True, phrases=True, fresh_text=False, patch_skip=True,
                               frame_diff=False, flow=True, runlocal=False)
  config = config_utils.load_config(os.path.join(_HERE, "coca_image.py") +
                                    (":runlocal" if arg.runlocal else ""))
  config.extensions = EXTENSIONS
  text_len = config.model.max_len
  config.input.num_frames = NUM_FRAMES
  config.model.video = _VIDEOCOCA.video_model(
      arg.video, NUM_FRAMES, "sincos" if arg.video == "attentional_pooler" else "none")
  config.model.video.temporal_depth = 2
  if arg.patch_skip:
    config.model.token_adapter = dict(name="patch_skip", frame_diff=arg.frame_diff,
                                      normal_flow=arg.flow)

  # Verb-swapped hard negatives: each clip's caption rewritten for the 6 other motions. Random
  # batches rarely hold two clips that differ only in motion, so without them the contrastive
  # embedding can match captions on appearance alone. The verb-phrase loss asks for the motion
  # alone, in the caption's words.
  texts, kept, extra_texts = "", '"frames", "text"', {}
  if arg.negatives:
    texts += (f'motion_negatives|tokenize({text_len + 1}, key="negative_captions", '
              'out="negatives")|')
    kept += ', "negatives"'
    extra_texts["negatives"] = len(scenes.MOTIONS) - 1
  if arg.phrases:
    texts += (f'motion_phrases|tokenize({VERB_PHRASE_LEN}, key="phrase_captions", '
              'out="phrases")|')
    kept += ', "phrases"'
    extra_texts["phrases"] = len(scenes.MOTIONS)
    config.loss.terms = dict(verb_phrase=dict(weight=1.0, texts="phrases"))
  config.input.update(
      data=dict(SHAPES_VIDEO, split="train"), cache=True, batch_size=32, extra_texts=extra_texts,
      pp=(f'sample_frames({NUM_FRAMES}, mode="random_segment")|decode_video|resize(64)|'
          f'choose_caption|tokenize({text_len + 1})|{texts}keep({kept})'))
  eval_pp = (f'sample_frames({NUM_FRAMES})|decode_video|resize(64)|'
             'keep("frames", "captions", "label", "id")')
  test = dict(SHAPES_VIDEO, split="test")
  config.evals = dict(
      motion=dict(type="classification", every=0, batch_size=100, data=test, pp=eval_pp,
                  class_names=list(scenes.MOTION_CLASS_NAMES),
                  templates=list(scenes.MOTION_PROMPT_TEMPLATES), label_key="label"),
      retrieval=dict(type="retrieval", every=0, batch_size=100, data=test, pp=eval_pp),
      captioning=dict(type="captioning", every=0, batch_size=100, data=test, pp=eval_pp,
                      decode=dict(method="greedy", max_new_tokens=text_len), show_examples=12,
                      baseline_captions_from=dict(SHAPES_VIDEO, split="train")),
  )
  _VIDEOCOCA.apply_video_options(config, arg)
  if arg.init:  # The image model's tokenizer (its model config is the shapes one above).
    config_utils.init_from_checkpoint(config, arg.init, model=False)
  if arg.fresh_text:  # LiT's setting: the text tower trained from scratch.
    config.init_dont_load = (r"^token_embedding/", r"^text_encoder/", r"^text_proj/")
  config.optimizer.update(lr=1e-3, warmup_steps=60, decay="cosine")
  config.total_steps = 600
  config.log_every = 50
  config.checkpoint_every = 200
  if arg.runlocal:
    config.total_steps = 20
    config.log_every = 5
    config.optimizer.warmup_steps = 5
    for e in config.evals.values():
      e.batch_size = 20
  if arg.mode == "frozen_ft":
    config.frozen_ft_boundary = config.total_steps // 4
  return config
