"""The shapes project's image stage: a small CoCa on the image view of the embedded shapes_video.

  --config=configs/proj/shapes/coca_image.py[:runlocal]

The model: 64x64 frames, 8x8 patches, ~2M parameters; the poolers see 2D sin-cos positions
(captions name positions, and motion is a change of position; a deviation from CoCa, whose poolers
see none). The SentencePiece tokenizer is the job's (`./run.sh` trains one on the captions).
"""
import os

from videococa import config_utils
from videococa.models import presets

_CONFIGS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT_LEN = 24  # Shapes captions are at most 18 words.
PP = f'decode_image|resize(64)|choose_caption|tokenize({TEXT_LEN + 1})|keep("frames", "text")'


def model():
  return presets.coca(width=128, depth=4, mlp_dim=512, heads=4, text_depth=2, image_size=64,
                      patch_size=8, vocab_size=256, max_len=TEXT_LEN, num_queries=32,
                      embed_dim=128, pooler_positions="sincos2d")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, runlocal=False)
  config = config_utils.load_config(os.path.join(_CONFIGS, "coca.py") + ":tiny")
  config.model = model()
  config.input.update(source="tfds", batch_size=64,
                      data=dict(name="shapes_video/image", split="train", data_dir=None, dir=None),
                      pp=PP, mixture={}, shuffle_buffer=2000, cache=True, num_parallel_calls=-1,
                      tokenizer="{workdir}/tokenizer.model", tokenizer_vocab_size=256)
  config.optimizer.update(name="adamw", lr=1e-3, eps=1e-8, weight_decay=1e-4, warmup_steps=60,
                          decay="cosine")
  config.total_steps = 600
  config.log_every = 50
  config.checkpoint_every = 200
  if arg.runlocal:
    config_utils.shrink_for_local_run(config, batch_size=16)
  return config
