"""open_clip <-> videococa conversion: converted random models compute what open_clip computes,
round trips are bitwise exact, the CLI converts both ways and errors name what is wrong.

Every open_clip parameter is redrawn at random first (open_clip initialises LayerNorms and biases
to constants, its decoder projection to zeros), so that a transposed or mis-split tensor cannot go
unnoticed.
"""
import copy
import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from absl import app
from flax import traverse_util

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from tests import openclip_helpers  # noqa: E402
from videococa.models import coca, presets  # noqa: E402
from videococa.tools import convert, openclip
from videococa.train import checkpoint  # noqa: E402

# Reduced CoCas: vision width != embed_dim (open_clip's pooler has separate q/k/v projections) and
# == embed_dim (one packed in_proj_weight), the second with QuickGELU.
TINY_COCA = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=48, layers=2, head_width=16,
                    attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=6,
                    output_tokens=True),
    text_cfg=dict(context_length=12, vocab_size=100, width=32, heads=2, layers=2, embed_cls=True,
                  output_tokens=True),
    multimodal_cfg=dict(context_length=12, vocab_size=100, width=32, heads=4, layers=2))
TINY_COCA_PACKED = copy.deepcopy(TINY_COCA)
TINY_COCA_PACKED["vision_cfg"].update(width=32, head_width=8)
TINY_COCA_PACKED["quick_gelu"] = True


def _inputs(image_size, context, vocab, seed=0):
  """Images `[2, 3, H, W]` and captions `[2, context]`: one padded with 0 after its end token."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(2, 3, image_size, image_size)).astype(np.float32)
  tokens = np.zeros((2, context), np.int64)
  for row, length in enumerate((context // 3, context)):
    tokens[row, :length] = [vocab - 2, *rng.integers(1, vocab - 2, length - 2), vocab - 1]
  return images, tokens


def _ours(config, params, images, tokens):
  """Our (image_emb, text_emb, caption logits) in one jitted call, like open_clip's forward."""
  config = copy.deepcopy(config)
  config.attention_impl, config.dtype = "xla", "float32"
  model = coca.Model(**config)

  def forward(module, frames, text):
    image_emb, caption = module.encode_visual(frames)
    text_emb, features = module.encode_text(text)
    out = dict(image_emb=image_emb, text_emb=text_emb)
    if config.decoder.depth:  # open_clip decodes all but the last token (teacher forcing).
      out["logits"] = module.logits(module.decode(features[:, :-1], caption))
    return out

  run = jax.jit(lambda p, x, t: nn.apply(forward, model)({"params": p}, x, t))
  return jax.device_get(run(params, images.transpose(0, 2, 3, 1), tokens.astype(np.int32)))


def _theirs(model, images, tokens):
  images, tokens = torch.from_numpy(images), torch.from_numpy(tokens)
  with torch.no_grad():
    if isinstance(model, open_clip.CoCa):
      out = model(images, tokens)
      return dict(image_emb=out["image_features"], text_emb=out["text_features"],
                  logits=out["logits"])
    return dict(image_emb=model.encode_image(images, normalize=True),
                text_emb=model.encode_text(tokens, normalize=True))


# Parity tolerances, ~10x the max errors measured (float32 on CPU, XLA vs PyTorch; the inputs
# and the perturbed parameters are seeded): max |ours - theirs| of the L2-normalised embeddings,
# and max |logits difference| / max |open_clip logits|.
PARITY_TOLERANCES = {
    # Measured: image_emb 1.42e-7, text_emb 1.86e-7, logits_rel 1.83e-6.
    "coca_ViT-B-32": dict(image_emb=1.5e-6, text_emb=2e-6, logits_rel=2e-5),
    # Measured: image_emb 1.42e-7, text_emb 1.84e-7.
    "ViT-B-32": dict(image_emb=1.5e-6, text_emb=2e-6),
    # TINY_COCA, measured: image_emb 1.49e-7, text_emb 5.96e-8, logits_rel 2.75e-7.
    "tiny CoCa (mlp_act=gelu)": dict(image_emb=1.5e-6, text_emb=6e-7, logits_rel=3e-6),
    # TINY_COCA_PACKED, measured: image_emb 1.19e-7, text_emb 5.96e-8, logits_rel 2.29e-7 on 2
    # cores, 3.06e-7 on 1 core (the other errors are the same on 1 core).
    "tiny CoCa (mlp_act=quick_gelu)": dict(image_emb=1.2e-6, text_emb=6e-7, logits_rel=3e-6),
}


def _assert_parity(name, config, model, params):
  images, tokens = _inputs(config.vision.image_size, config.max_len, config.vocab_size)
  ours, theirs = _ours(config, params, images, tokens), _theirs(model, images, tokens)
  assert set(ours) == set(theirs)
  errors = {}
  for key in ("image_emb", "text_emb"):
    errors[key] = float(np.max(np.abs(ours[key] - theirs[key].numpy())))
  if "logits" in theirs:
    reference = theirs["logits"].numpy()
    assert ours["logits"].shape == reference.shape
    errors["logits_rel"] = float(np.max(np.abs(ours["logits"] - reference))
                                 / np.max(np.abs(reference)))
  print(f"\n{name} max errors: {errors}")
  tolerances = PARITY_TOLERANCES[name]
  assert set(errors) == set(tolerances), (name, errors, tolerances)
  too_large = {k: (errors[k], tolerances[k]) for k in errors if not errors[k] <= tolerances[k]}
  assert not too_large, f"{name}: (max error, tolerance) {too_large}"


def _state(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def _assert_equal(a, b):
  """Bitwise equality of two {name: array} dicts, naming the entries that differ."""
  assert {k: np.shape(v) for k, v in a.items()} == {k: np.shape(v) for k, v in b.items()}
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, f"differ: {different}"


def _assert_round_trips(config, model, params):
  """open_clip -> ours -> open_clip and ours -> open_clip -> ours are bitwise; strict loading."""
  back = openclip.to_openclip(params, config)
  _assert_equal(back, _state(model))
  again = openclip.to_videococa(back, config)
  _assert_equal(traverse_util.flatten_dict(again), traverse_util.flatten_dict(params))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


@pytest.fixture(scope="module")
def coca_b32():
  model = openclip_helpers.perturbed(open_clip.create_model("coca_ViT-B-32"))
  config = openclip.get_config("coca_ViT-B-32")
  return config, model, openclip.to_videococa(model.state_dict(), config)


@pytest.fixture(scope="module", params=[TINY_COCA, TINY_COCA_PACKED], ids=["tiny", "tiny_packed"])
def tiny_coca(request):
  model = openclip_helpers.perturbed(open_clip.CoCa(**copy.deepcopy(request.param)))
  config = openclip.config_from_openclip(request.param)
  return request.param, config, model, openclip.to_videococa(model.state_dict(), config)


@pytest.mark.parametrize("name", sorted(openclip.OPENCLIP_PRESETS))
def test_presets_are_open_clip_configs_with_its_parameter_shapes(name):
  config = presets.get(openclip.OPENCLIP_PRESETS[name])
  converted = openclip.config_from_openclip(open_clip.get_model_config(name))
  assert converted.to_dict() == config.to_dict()
  with torch.device("meta"):  # Shapes only: no memory, no initialisation.
    model = open_clip.create_model(name, device="meta")
  expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert openclip.openclip_shapes(config) == expected


@pytest.mark.slow
def test_coca_b32_matches_open_clip(coca_b32):
  _assert_parity("coca_ViT-B-32", *coca_b32)


@pytest.mark.slow
def test_coca_b32_round_trips_exactly(coca_b32):
  _assert_round_trips(*coca_b32)


@pytest.mark.slow
def test_clip_b32_matches_open_clip_and_round_trips():
  model = openclip_helpers.perturbed(open_clip.create_model("ViT-B-32"))
  config = openclip.get_config("ViT-B-32")
  params = openclip.to_videococa(model.state_dict(), config)
  _assert_parity("ViT-B-32", config, model, params)
  _assert_round_trips(config, model, params)


def test_tiny_coca_matches_open_clip_and_round_trips(tiny_coca):
  _, config, model, params = tiny_coca
  _assert_parity(f"tiny CoCa (mlp_act={config.mlp_act})", config, model, params)
  _assert_round_trips(config, model, params)


@pytest.mark.parametrize("tiny_coca", [TINY_COCA], indirect=True, ids=["tiny"])
def test_padding_exercises_the_legacy_cls_mask(tiny_coca):
  """With the exact CLS mask the padded caption's embedding differs from open_clip's, so the parity
  tests do check the legacy mask."""
  _, config, model, params = tiny_coca
  images, tokens = _inputs(config.vision.image_size, config.max_len, config.vocab_size)
  exact = copy.deepcopy(config)
  exact.text.cls_mask = "exact"
  ours = _ours(exact, params, images, tokens)["text_emb"]
  theirs = _theirs(model, images, tokens)["text_emb"].numpy()
  # Padded: measured 9.4e-3 (TINY_COCA), ~1.6e4x the 6e-7 parity tolerance of its text
  # embeddings, so the parity tests would catch the exact mask.
  assert np.max(np.abs(ours[0] - theirs[0])) > 1e-3
  # Full length (no padding): measured 5.96e-8 (TINY_COCA); ~10x.
  np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=6e-7)


def _cli(*argv):
  """Runs `python -m videococa.tools.convert ARGV...`; returns the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "videococa.tools.convert", *map(str, argv)],
                        capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("tiny_coca", [TINY_COCA], indirect=True, ids=["tiny"])
def test_cli_round_trip_with_training_checkpoint_and_safetensors(tiny_coca, tmp_path):
  cfg, config, model, params = tiny_coca
  model_json = tmp_path / "tiny.json"
  model_json.write_text(json.dumps({"model_cfg": cfg}))  # As in an open_clip_config.json.
  # A training checkpoint: state_dict under 'state_dict', DistributedDataParallel's prefix.
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
             tmp_path / "train.pt")
  result = _cli("from_open_clip", f"--model={model_json}", f"--checkpoint={tmp_path / 'train.pt'}",
                f"--out={tmp_path / 'ours'}")
  assert result.returncode == 0, result.stderr
  loaded, meta = checkpoint.load_params(str(tmp_path / "ours"))
  _assert_equal(traverse_util.flatten_dict(jax.device_get(loaded)),
                traverse_util.flatten_dict(params))
  assert meta["model_name"] == "coca"
  assert meta["model"] == json.loads(json.dumps(config.to_dict()))
  assert meta["model"]["image_mean"] == list(presets.CLIP_IMAGE_MEAN)
  assert meta["model"]["image_std"] == list(presets.CLIP_IMAGE_STD)
  assert meta["tokenizer"] == "clip_bpe"
  result = _cli("to_open_clip", f"--model={model_json}", f"--checkpoint={tmp_path / 'ours'}",
                f"--out={tmp_path / 'back.safetensors'}")
  assert result.returncode == 0, result.stderr
  state = openclip.load_state_dict(str(tmp_path / "back.safetensors"))
  _assert_equal(state, _state(model))
  fresh = open_clip.CoCa(**copy.deepcopy(cfg))
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("tiny_coca", [TINY_COCA], indirect=True, ids=["tiny"])
def test_safetensors_convert_without_torch(tiny_coca, tmp_path):
  """A bfloat16 .safetensors file (as published on the Hugging Face hub) converts in a process
  where torch cannot be imported, and back; the values are the bfloat16 ones, exactly."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  cfg, config, model, _ = tiny_coca
  (tmp_path / "tiny.json").write_text(json.dumps(cfg))
  save_file({k: v.bfloat16().contiguous() for k, v in model.state_dict().items()},
            tmp_path / "model.safetensors")
  no_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_module('videococa.tools.convert', run_name='__main__')")
  for argv in (["from_open_clip", f"--checkpoint={tmp_path / 'model.safetensors'}",
                f"--out={tmp_path / 'ours'}"],
               ["to_open_clip", f"--checkpoint={tmp_path / 'ours'}",
                f"--out={tmp_path / 'back.safetensors'}"]):
    result = subprocess.run([sys.executable, "-c", no_torch, "convert", *argv,
                             f"--model={tmp_path / 'tiny.json'}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
  bf16 = {k: v.bfloat16().float().numpy() for k, v in model.state_dict().items()}
  loaded, _ = checkpoint.load_params(str(tmp_path / "ours"))
  _assert_equal(traverse_util.flatten_dict(jax.device_get(loaded)),
                traverse_util.flatten_dict(openclip.to_videococa(bf16, config)))
  _assert_equal(openclip.load_state_dict(str(tmp_path / "back.safetensors")), bf16)
  (tmp_path / "x.pt").write_bytes(b"")
  result = subprocess.run([sys.executable, "-c", no_torch, "convert", "from_open_clip",
                           f"--checkpoint={tmp_path / 'x.pt'}", f"--out={tmp_path / 'o'}",
                           f"--model={tmp_path / 'tiny.json'}"], capture_output=True, text=True)
  assert result.returncode == 2 and "needs PyTorch (`pip install torch`)" in result.stderr


@pytest.mark.slow
def test_cli_errors(tmp_path):
  """Unknown models are listed with the known ones; the known commands are named."""
  result = _cli("to_open_clip", "--model=coca_ViT-B-99", f"--checkpoint={tmp_path}",
                f"--out={tmp_path / 'back.pt'}")
  assert result.returncode != 0
  assert "Unknown open_clip model 'coca_ViT-B-99'; known: " in result.stderr
  assert "coca_ViT-B-32" in result.stderr and "ViT-B-16" in result.stderr
  with pytest.raises(app.UsageError, match=r"from_open_clip\|to_open_clip"):
    convert.main(["convert", "to_the_moon"])


def test_shape_mismatch_names_the_parameter_and_both_shapes(tiny_coca):
  _, config, model, _ = tiny_coca
  state = dict(model.state_dict())
  state["visual.positional_embedding"] = torch.zeros(197, 48)
  state["text_decoder.cross_attn.1.attn.in_proj_weight"] = torch.zeros(3, 32)
  del state["logit_scale"]
  state["visual.attn_pool.extra"] = torch.zeros(2)
  state["text.attn_mask"] = torch.zeros(13, 13)  # A non-persistent buffer: ignored.
  with pytest.raises(ValueError) as e:
    openclip.to_videococa(state, config)
  message = str(e.value)
  width = config.vision.width
  assert f"visual.positional_embedding: expected (17, {width}), found (197, 48)" in message
  assert ("text_decoder.cross_attn.1.attn.in_proj_weight: expected (96, 32), found (3, 32)"
          in message)
  assert "missing (1):\n  logit_scale" in message
  assert "unexpected (not used) (1):\n  visual.attn_pool.extra" in message


def test_checkpoint_of_another_model_is_rejected_by_name(tmp_path):
  model = open_clip.CoCa(**copy.deepcopy(TINY_COCA))
  torch.save(model.state_dict(), tmp_path / "tiny.pt")
  with pytest.raises(ValueError, match=r"visual\.conv1\.weight: expected \(768, 3, 32, 32\), "
                                       r"found \(48, 3, 8, 8\)"):
    convert.from_open_clip("coca_ViT-B-32", str(tmp_path / "tiny.pt"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_params_mismatch_names_our_parameter(tiny_coca):
  _, config, _, params = tiny_coca
  params = jax.tree.map(lambda x: x, params)
  params["visual"]["pos_embedding"] = np.zeros((3, 4), np.float32)
  del params["logit_scale"]
  with pytest.raises(ValueError) as e:
    openclip.to_openclip(params, config)
  assert f"visual/pos_embedding: expected (17, {config.vision.width}), found (3, 4)" in str(e.value)
  assert "missing (1):\n  logit_scale" in str(e.value)


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown open_clip model 'RN50'; known: .*coca_ViT-L-14"):
    openclip.get_config("RN50")


def test_inexpressible_configs_are_refused():
  config = openclip.config_from_openclip(TINY_COCA)
  config.text.cls_mask = "exact"
  with pytest.raises(ValueError, match=r"model\.text\.cls_mask='exact' \(open_clip: "
                                       r"'openclip_legacy'\)"):
    openclip.openclip_shapes(config)
  cfg = copy.deepcopy(TINY_COCA)
  cfg["vision_cfg"]["ls_init_value"] = 1e-5
  cfg["text_cfg"]["hf_model_name"] = "bert-base-uncased"
  with pytest.raises(ValueError, match=r"vision_cfg\.ls_init_value=1e-05 \(only None is supported\)"
                                       r".*text_cfg\.hf_model_name="):
    openclip.config_from_openclip(cfg)
  config = openclip.config_from_openclip(TINY_COCA)
  config.pooler.mode = "parallel"
  with pytest.raises(ValueError, match="has .*pooling/caption_pooler.* with no open_clip"):
    openclip.openclip_shapes(config)
