"""Every named config builds: model init and one train step trace, abstractly (`jax.eval_shape`,
nothing allocated, nothing compiled), on a one-device mesh; and the recipes' promises (parameter
trees of the video variants, the tokenizer of `init=`, CoCa's optimizer) hold.

Tracing is pure Python (about 3-5 s per config on a 2-core CPU, whatever the model size), so
each config is traced once (`_traced`, cached) and the other tests reuse its results.
"""
from __future__ import annotations

import functools
import re

import jax
import numpy as np
import pytest

from videococa import config_utils, errors
from videococa.evaluators import prompts
from videococa.models import presets
from videococa.train import checkpoint, optim, sharding, trainer as trainer_lib

B = 2  # Batch size of the abstract batches.
COCA = "configs/coca.py"
VIDEOCOCA = "configs/videococa.py"
SHAPES_IMAGE = "configs/proj/shapes/coca_image.py"
SHAPES_VIDEO = "configs/proj/shapes/videococa.py"
VIDEO_VARIANTS = ("attentional_pooler", "factorized", "joint_space_time", "mean_pool")

# (config spec, training stage). Stage 1 of frozen_ft is its 'ft' stage. Tracing costs 3-5 s per
# config on a 2-core CPU, so only one config per code path runs by default; the others, whose
# train step runs no code that an unmarked entry does not (other sizes, the frozen_ft stages, the
# shapes recipe's switches and variants), are marked slow (`-m "not slow"` skips them).
slow = pytest.mark.slow
CONFIGS = [
    pytest.param(f"{COCA}:tiny", 0),  # AdamW, float32, no remat.
    pytest.param(f"{COCA}:base", 0),  # Adafactor, bfloat16, remat.
    pytest.param(f"{COCA}:large", 0, marks=slow),
    # lit; joint_space_time's ViT and mean_pool's pooling also run in tests/test_video.py.
    *[pytest.param(f"{VIDEOCOCA}:videocc3m,video={v}", 0,
                   marks=() if v in ("attentional_pooler", "factorized") else slow)
      for v in VIDEO_VARIANTS],
    pytest.param(f"{VIDEOCOCA}:videocc3m,mode=frozen", 0, marks=slow),
    pytest.param(f"{VIDEOCOCA}:videocc3m,mode=ft", 0, marks=slow),  # Nothing frozen, as coca's.
    pytest.param(f"{VIDEOCOCA}:videocc3m,mode=frozen_ft", 0, marks=slow),
    pytest.param(f"{VIDEOCOCA}:videocc3m,mode=frozen_ft", 1, marks=slow),
    pytest.param(f"{VIDEOCOCA}:videocc3m,model=large", 0, marks=slow),
    pytest.param(f"{VIDEOCOCA}:videocc3m,temporal=sincos", 0, marks=slow),  # As SHAPES_VIDEO's.
    pytest.param(f"{VIDEOCOCA}:tiny", 0, marks=slow),
    # The shapes recipe: patch skip with normal flow, hard negatives, verb phrases, sin-cos
    # temporal embedding, sin-cos pooler positions (coca_image's model).
    pytest.param(SHAPES_VIDEO, 0),
    pytest.param(SHAPES_IMAGE, 0, marks=slow),
    *[pytest.param(f"{SHAPES_VIDEO}:{switch}", 0, marks=slow) for switch in (
        "patch_skip=False", "frame_diff", "flow=False", "negatives=False", "phrases=False")],
    *[pytest.param(f"{SHAPES_VIDEO}:video={v}", 0, marks=slow) for v in VIDEO_VARIANTS[1:]],
]
CONFIG_IDS = [f"{p.values[0]}@{p.values[1]}" for p in CONFIGS]
# Options that change no traced program (only what is loaded into it): checked on the config.
# shapes `fresh_text` sets config.init_dont_load (test_fresh_text_patterns_match_the_text_tower);
# `init=PATH` sets the init checkpoint and tokenizer (test_init_brings_its_tokenizer).


def _load(spec: str):
  config = config_utils.load_config(spec)
  config.input.batch_size = B
  return config


@functools.lru_cache(maxsize=None)
def _mesh():
  return sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])


def _text_lengths(config) -> dict[str, int]:
  """Token count of each `tokenize(N, ..., out="key")` of the pp string (default: captions)."""
  return {key: int(n) for n, key in
          re.findall(r'tokenize\((\d+)[^)]*?out="(\w+)"', config.input.get("pp", ""))}


def abstract_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
  size, frames = config.model.vision.image_size, config.input.num_frames
  text_len = config.model.max_len + 1
  lengths = _text_lengths(config)
  batch = dict(frames=jax.ShapeDtypeStruct((B, frames, size, size, 3), np.uint8),
               text=jax.ShapeDtypeStruct((B, text_len), np.int32))
  for key, k in config.input.get("extra_texts", {}).items():
    batch[key] = jax.ShapeDtypeStruct((B, k, lengths.get(key, text_len)), np.int32)
  return batch


@functools.lru_cache(maxsize=None)
def _trainer(spec: str, stage: int):
  """(config, trainer): building it traces model init (abstractly) and builds the optimizer."""
  config = _load(spec)
  return config, trainer_lib.Trainer(config, _mesh(), stage=stage)


@functools.lru_cache(maxsize=None)
def _traced(spec: str, stage: int):
  """(config, trainer, abstract state, abstract (state, metrics) after one train step)."""
  config, trainer = _trainer(spec, stage)
  state = trainer.abstract_state()
  with trainer.mesh_context():
    step = trainer._train_step  # pylint: disable=protected-access
    out = jax.eval_shape(step, state, abstract_batch(config))
  return config, trainer, state, out


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  paths = sharding.tree_paths(tree)
  return {p: (tuple(x.shape), str(x.dtype))
          for p, x in zip(jax.tree.leaves(paths), jax.tree.leaves(tree))}


@pytest.mark.parametrize("spec,stage", CONFIGS, ids=CONFIG_IDS)
def test_config_traces_init_and_a_train_step(spec, stage):
  config, trainer, state, (new_state, metrics) = _traced(spec, stage)
  # The state after a step has the state's structure, shapes and dtypes (what donation needs).
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert (before.shape, before.dtype) == (after.shape, after.dtype)
  # Parameters are kept in float32 whatever the compute dtype; the state is fully sharded.
  params = _shapes(state.params)
  assert params and all(dtype == "float32" for _, dtype in params.values()), params
  assert all(x.sharding is not None for x in jax.tree.leaves(state))
  # Metrics are scalars, the loss among them, with one entry per extra loss term.
  assert metrics["loss"].shape == () and metrics["loss"].dtype == np.float32
  assert all(m.shape == () for m in metrics.values()), {k: m.shape for k, m in metrics.items()}
  for term in config.loss.get("terms", {}) or {}:
    assert f"{term}_loss" in metrics, sorted(metrics)
  if "negatives" in config.input.get("extra_texts", {}):
    assert "hard_negative_accuracy" in metrics, sorted(metrics)
  # The stage's frozen set is what its training mode says.
  frozen = {p for p, f in zip(jax.tree.leaves(sharding.tree_paths(trainer.abstract_params)),
                              jax.tree.leaves(trainer.frozen)) if f}
  mode = config.get("training_mode", "ft")
  if mode == "frozen_ft":
    mode = "frozen" if stage == 0 else "ft"
  trainable = set(params) - frozen
  if mode == "ft":
    assert not frozen
  elif mode == "lit":
    assert frozen == {p for p in params if p.startswith("visual/")
                      and p != "visual/temporal_embedding"}, sorted(trainable)
    assert any(p.startswith("visual/") for p in frozen)
  elif mode == "frozen":
    assert trainable and frozen
    assert all(re.match(r"(pooling|image_proj|temporal_encoder|adapter)/", p)
               or p in ("temporal_embedding", "visual/temporal_embedding") for p in trainable), (
                   sorted(trainable))


def test_every_train_step_config_is_distinct():
  """The matrix holds no duplicate (a spec that silently equals another would test nothing)."""
  keys = []
  for param in CONFIGS:
    spec, stage = param.values
    config = _load(spec)
    keys.append((config.to_json_best_effort(sort_keys=True), stage))
  assert len(set(keys)) == len(keys)


def _param_shapes(spec: str) -> dict[str, tuple[int, ...]]:
  return {p: shape for p, (shape, _) in _shapes(_trainer(spec, 0)[1].abstract_params).items()}


def test_videococa_attentional_pooler_has_exactly_the_image_models_parameters():
  """The paper's default adds no parameter: same paths and shapes as CoCa-Base; the sin-cos
  temporal option adds `temporal_embedding` only; `factorized` adds its temporal transformer."""
  image = _param_shapes(f"{COCA}:base")
  video = _param_shapes(f"{VIDEOCOCA}:videocc3m,video=attentional_pooler")
  assert config_utils.load_config(f"{VIDEOCOCA}:videocc3m").model.video.variant == (
      "attentional_pooler")
  assert video == image
  sincos = _param_shapes(f"{VIDEOCOCA}:videocc3m,temporal=sincos")
  assert set(sincos) - set(image) == {"temporal_embedding"}
  assert {p: s for p, s in sincos.items() if p in image} == image
  assert sincos["temporal_embedding"] == (8, 768)
  factorized = _param_shapes(f"{VIDEOCOCA}:videocc3m,video=factorized")
  added = set(factorized) - set(image)
  assert added and all(p.startswith("temporal_encoder/") for p in added), sorted(added)
  assert {p: s for p, s in factorized.items() if p in image} == image
  large = _param_shapes(f"{VIDEOCOCA}:videocc3m,model=large")
  assert large == _param_shapes(f"{COCA}:large")


def test_parameter_counts_match_the_paper():
  """CoCa-Base 383M, CoCa-Large 787M (paper table 1; within 2%)."""
  for size, expected in (("base", 383e6), ("large", 787e6)):
    count = sum(int(np.prod(s)) for s in _param_shapes(f"{COCA}:{size}").values())
    assert abs(count / expected - 1) < 0.02, (size, count)


def test_init_brings_its_model_normalisation_and_tokenizer(tmp_path):
  """`init=PATH` takes the model config (pixel statistics included) and tokenizer recorded in
  PATH's meta, keeping the recipe's compute settings; without them, PATH/tokenizer.model."""
  converted, bare = str(tmp_path / "converted"), str(tmp_path / "bare")
  model = presets.get("openclip_coca_vit_b32").to_dict()
  checkpoint.save_params(converted, {"w": np.zeros(2)},
                         dict(model_name="coca", model=model, tokenizer="clip_bpe"))
  checkpoint.save_params(bare, {"w": np.zeros(2)}, {})
  config = config_utils.load_config(f"{VIDEOCOCA}:finetune,init={converted},mode=ft")
  assert config.input.tokenizer == "clip_bpe" and config.input.tokenizer_vocab_size == 0
  assert config.init_from == converted
  assert tuple(config.model.image_mean) == presets.CLIP_IMAGE_MEAN
  assert config.model.vision.image_size == 224 and config.model.max_len == 76
  assert config.model.dtype == "bfloat16"  # The recipe's, not the checkpoint's float32.
  assert config.model.video.variant == "attentional_pooler" and config.model.video.num_frames == 8
  assert "resize" in config.input.pp and "tokenize(77)" in config.input.pp
  plain = config_utils.load_config(f"{VIDEOCOCA}:videocc3m,init={bare}")
  assert plain.input.tokenizer == f"{bare}/tokenizer.model"
  assert tuple(plain.model.image_mean) == (0.5, 0.5, 0.5)  # The size preset's: [-1, 1].
  shapes = config_utils.load_config(f"{SHAPES_VIDEO}:init={converted}")
  assert shapes.input.tokenizer == "clip_bpe" and shapes.model.vision.image_size == 64
  assert config_utils.load_config(f"{VIDEOCOCA}:videocc3m").init_from == ""
  with pytest.raises(errors.MissingPathError, match="No checkpoint directory at /some/dir"):
    config_utils.load_config(f"{VIDEOCOCA}:videocc3m,init=/some/dir")


def test_fresh_text_patterns_match_the_text_tower():
  """`fresh_text` changes no traced program, only which parameters `init=` loads: each of its
  `init_dont_load` patterns matches parameters of the model, none of the visual side."""
  config = config_utils.load_config(f"{SHAPES_VIDEO}:fresh_text")
  default = config_utils.load_config(SHAPES_VIDEO)
  assert tuple(default.init_dont_load) == ()
  patterns = tuple(config.init_dont_load)
  assert patterns
  paths = list(_shapes(_trainer(SHAPES_VIDEO, 0)[1].abstract_params))
  for pattern in patterns:
    assert any(re.search(pattern, p) for p in paths), (pattern, paths)
  matched = [p for p in paths if sharding.path_matches(p, patterns)]
  assert not [p for p in matched if p.startswith(("visual/", "pooling/", "image_proj/"))]
  config.init_dont_load, default.init_dont_load = (), ()
  assert config.to_dict() == default.to_dict()


@pytest.mark.parametrize("size", ["base", "large"])
def test_coca_optimizer_is_the_papers(size):
  """Adafactor, beta1 0.9, beta2 0.999, decoupled weight decay 0.01, peak lr 8e-4 after a 2%
  linear warmup, then linear decay to zero at total_steps."""
  config = config_utils.load_config(f"{COCA}:{size}")
  opt = config.optimizer
  assert (opt.name, opt.b1, opt.b2, opt.weight_decay, opt.lr) == ("adafactor", 0.9, 0.999, 0.01,
                                                                  8e-4)
  assert (opt.decay, opt.end_factor) == ("linear", 0.0)
  total = config.total_steps
  assert total == 500_000 and opt.warmup_steps == total // 50 == int(0.02 * total)
  assert config.model.dtype == "bfloat16"
  assert (config.loss.contrastive_weight, config.loss.caption_weight) == (1.0, 2.0)
  schedule = optim.make_schedule(opt, total)
  warmup = opt.warmup_steps
  lr = lambda step: float(schedule(step))  # noqa: E731
  np.testing.assert_allclose(
      [lr(0), lr(warmup // 2), lr(warmup), lr((warmup + total) // 2), lr(total)],
      [0.0, 4e-4, 8e-4, 4e-4, 0.0], rtol=1e-5, atol=1e-12)
  assert lr(warmup - 1) < lr(warmup) > lr(warmup + 1)


def test_frozen_ft_is_frozen_then_ft():
  """frozen_ft trains the poolers for the first quarter of the steps, then everything (its two
  stages trace as the 'frozen' and 'ft' configs do; the slow entries above trace them too)."""
  config = config_utils.load_config(f"{VIDEOCOCA}:videocc3m,mode=frozen_ft")
  quarter = config.total_steps // 4
  assert config.frozen_ft_boundary == quarter > 0
  assert optim.stages(config) == [(1, optim.FROZEN_PATTERNS["frozen"]), (quarter + 1, ())]
  assert [optim.stage_of(config, s) for s in (1, quarter, quarter + 1)] == [0, 0, 1]
  for spec in (f"{VIDEOCOCA}:tiny,mode=frozen_ft", f"{SHAPES_VIDEO}:mode=frozen_ft"):
    config = config_utils.load_config(spec)
    assert 0 < config.frozen_ft_boundary == config.total_steps // 4 < config.total_steps


def test_zeroshot_config_builds_each_benchmark_from_the_checkpoint(tmp_path):
  ckpt = str(tmp_path / "converted")
  checkpoint.save_params(ckpt, {"w": np.zeros(2)}, dict(
      model_name="coca", model=presets.get("openclip_coca_vit_b32").to_dict(), tokenizer="clip_bpe"))
  folders = {name: tmp_path / name for name in ("msrvtt", "k400", "imagenet", "coco")}
  for folder in folders.values():
    folder.mkdir()
  (folders["k400"] / "class_names.txt").write_text("abseiling\nair drumming\n")
  (folders["imagenet"] / "class_names.txt").write_text("".join(f"n{i:08d}\n" for i in range(1000)))
  config = config_utils.load_config(
      f"configs/zeroshot.py:ckpt={ckpt},msrvtt={folders['msrvtt']},kinetics={folders['k400']},"
      f"imagenet={folders['imagenet']},coco={folders['coco']},frames=4")
  assert {name: e.type for name, e in config.evals.items()} == {
      "msrvtt_retrieval": "retrieval", "msrvtt_captioning": "captioning",
      "kinetics_classification": "classification", "imagenet_classification": "classification",
      "coco_captioning": "captioning", "coco_retrieval": "retrieval"}
  assert config.input.tokenizer == "clip_bpe" and config.input.num_frames == 4
  assert config.model.video.variant == "attentional_pooler"  # The paper's zero-shot VideoCoCa.
  assert tuple(config.model.image_mean) == presets.CLIP_IMAGE_MEAN
  assert config.evals.msrvtt_retrieval.pp.startswith(
      'sample_frames(4)|decode_video|resize(224, method="bicubic", antialias=True)')
  assert config.evals.coco_captioning.pp.startswith("decode_image|")
  assert config.evals.msrvtt_captioning.decode.to_dict() == dict(method="beam", beam_size=4)
  kinetics = config.evals.kinetics_classification
  assert kinetics.class_names == f"{folders['k400']}/class_names.txt"
  assert len(kinetics.templates) == 28 and kinetics.label_key == "label_id"
  imagenet = config.evals.imagenet_classification
  assert imagenet.class_names == prompts.IMAGENET_CLASS_NAMES_FILE  # 1000 synset folders.
  with open(prompts.IMAGENET_CLASS_NAMES_FILE) as f:
    assert [line.strip() for line in f][:2] == ["tench", "goldfish"]
  assert len(imagenet.templates) == 80
  with pytest.raises(ValueError, match="at least one benchmark"):
    config_utils.load_config(f"configs/zeroshot.py:ckpt={ckpt}")
