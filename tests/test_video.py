"""VideoCoCa: the four video variants, training modes with frozen parameters, image -> video inflation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from videococa import config_utils
from videococa.errors import UserError
from videococa.models import coca, presets, video
from videococa.projects.shapes import patch_skip
from videococa.train import checkpoint, loop as train, optim, sharding, trainer as trainer_lib

NUM_FRAMES = 4


def _video_config(variant, patch_skip=False, frame_diff=False, normal_flow=False, **video):
  """coca_tiny as VideoCoCa `variant`; `patch_skip` adds the shapes project's token adapter."""
  cfg = presets.get("coca_tiny")
  cfg.video = dict(dict(variant=variant, num_frames=NUM_FRAMES, temporal_embedding=False,
                        temporal_depth=2), **video)
  if patch_skip:
    cfg.token_adapter = dict(name="patch_skip", frame_diff=frame_diff, normal_flow=normal_flow)
  return cfg


def _data(num_frames, seed=0):
  rng = np.random.default_rng(seed)
  frames = jnp.asarray(rng.uniform(-1, 1, (2, num_frames, 32, 32, 3)), jnp.float32)
  tokens = jnp.asarray(rng.integers(4, 64, (2, 12)), jnp.int32)
  return frames, tokens


@pytest.fixture(scope="module")
def image_model():
  cfg = presets.get("coca_tiny")
  model = coca.Model(**cfg)
  params = model.init(jax.random.key(0), *_data(1))["params"]
  return model, jax.tree.map(lambda x: getattr(x, "value", x), params,
                             is_leaf=lambda x: hasattr(x, "value"))


def _with_shared(video_params, image_params):
  """The video model's params with every parameter the image model has copied from it."""
  flat_video = traverse_util.flatten_dict(video_params)
  flat_image = traverse_util.flatten_dict(image_params)
  return traverse_util.unflatten_dict({k: flat_image.get(k, v) for k, v in flat_video.items()})


SLOW = pytest.mark.slow


@pytest.mark.parametrize("variant,extra", [
    ("attentional_pooler", {}),
    pytest.param("attentional_pooler", {"temporal_embedding": True}, marks=SLOW),
    pytest.param("attentional_pooler", {"temporal_embedding": "sincos"}, marks=SLOW),
    pytest.param("attentional_pooler", {"temporal_embedding": "sincos", "patch_skip": True},
                 marks=SLOW),
    pytest.param("attentional_pooler", {"temporal_embedding": "sincos", "patch_skip": True,
                                        "frame_diff": True}, marks=SLOW),
    ("attentional_pooler", {"temporal_embedding": "sincos", "patch_skip": True, "frame_diff": True,
                            "normal_flow": True}),
    ("factorized", {}),
    pytest.param("factorized", {"patch_skip": True}, marks=SLOW),
    pytest.param("joint_space_time", {}, marks=SLOW),
    pytest.param("mean_pool", {}, marks=SLOW)])
def test_one_frame_clip_gives_exactly_the_image_model(image_model, variant, extra):
  model_img, params_img = image_model
  model = coca.Model(**_video_config(variant, **extra))
  frames, tokens = _data(1)
  params = model.init(jax.random.key(1), frames, tokens)["params"]
  params = _with_shared(jax.tree.map(lambda x: getattr(x, "value", x), params,
                                     is_leaf=lambda x: hasattr(x, "value")), params_img)
  expected = jax.jit(model_img.apply)({"params": params_img}, frames, tokens)
  got = jax.jit(model.apply)({"params": params}, frames, tokens)
  for key in expected:  # Equal up to the rounding of two differently fused XLA programs.
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
  clip = jax.jit(model.apply)({"params": params}, _data(NUM_FRAMES)[0], tokens)
  assert clip["hidden"].shape == expected["hidden"].shape
  assert not np.allclose(clip["image_emb"], expected["image_emb"])


def test_sincos_temporal_embedding_init():
  """'sincos' starts the learned table at sin(t w), cos(t w) - 1 (zero at frame 0)."""
  model = coca.Model(**_video_config("attentional_pooler", temporal_embedding="sincos"))
  params = model.init(jax.random.key(1), *_data(NUM_FRAMES))["params"]
  table = np.asarray(getattr(params["temporal_embedding"], "value", params["temporal_embedding"]))
  width = table.shape[1]
  omega = 1.0 / 100 ** (np.arange(width // 2) / (width // 2 - 1))
  angle = np.arange(NUM_FRAMES)[:, None] * omega
  np.testing.assert_allclose(table, np.concatenate([np.sin(angle), np.cos(angle) - 1], 1),
                             atol=1e-6)
  assert not np.allclose(table[1], table[2])
  with pytest.raises(ValueError, match="temporal_embedding='cosine'"):
    video.temporal_init("cosine")


@pytest.mark.parametrize("frame_diff,normal_flow", [(False, False), (True, False), (True, True)])
def test_patch_skip_adds_projected_local_patch_features(image_model, frame_diff, normal_flow):
  """`patch_skip` feeds the poolers ViT(frames) + proj(LN(patch embedding + position embedding)),
  with `frame_diff` + diff_proj(LN(its change to the next frame, zero for the last)), with
  `normal_flow` + flow_proj(gelu(flow_hidden(normal flow)))."""
  model_img, params_img = image_model
  model = coca.Model(**_video_config("attentional_pooler", patch_skip=True, frame_diff=frame_diff,
                                     normal_flow=normal_flow))
  frames, tokens = _data(NUM_FRAMES)
  params = model.init(jax.random.key(1), frames, tokens)["params"]
  params = _with_shared(jax.tree.map(lambda x: getattr(x, "value", x), params,
                                     is_leaf=lambda x: hasattr(x, "value")), params_img)
  kernel = jax.random.normal(jax.random.key(2), params["adapter"]["proj"]["kernel"].shape)
  params["adapter"]["proj"]["kernel"] = kernel
  visual = params["visual"]
  patch = visual["patch_embed"]["kernel"].shape[0]
  flat = frames.reshape(-1, *frames.shape[2:])
  conv = jax.lax.conv_general_dilated(flat, visual["patch_embed"]["kernel"], (patch, patch),
                                      "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  local = (conv + visual["patch_embed"]["bias"]).reshape(*frames.shape[:2], -1, kernel.shape[0])
  local = local + visual["pos_embedding"]
  norm = lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)  # noqa
  expected_skip = norm(local) @ kernel
  if frame_diff:
    diff_kernel = jax.random.normal(jax.random.key(3), kernel.shape)
    params["adapter"]["diff_proj"]["kernel"] = diff_kernel
    diff = np.concatenate([local[:, 1:] - local[:, :-1], np.zeros_like(local[:, :1])], axis=1)
    expected_skip = expected_skip + norm(diff) @ diff_kernel
  if normal_flow:
    flow_kernel = jax.random.normal(jax.random.key(4), kernel.shape)
    params["adapter"]["flow_proj"]["kernel"] = flow_kernel
    hidden = params["adapter"]["flow_hidden"]
    flow = patch_skip.normal_flow(frames, patch)
    flow_features = jax.nn.gelu(flow @ hidden["kernel"] + hidden["bias"])
    expected_skip = expected_skip + flow_features @ flow_kernel
  vit_tokens = model_img.apply({"params": params_img}, frames, method=lambda m, f: m.visual(f))

  def pooler_input(m, f):
    out, patch_tokens = m.visual(f)
    return out + m.adapter(patch_tokens, f)

  got = model.apply({"params": params}, frames, method=pooler_input)
  np.testing.assert_allclose(got, vit_tokens + expected_skip, rtol=1e-4, atol=1e-4)


def test_normal_flow_of_a_translated_ramp_is_the_shift():
  """A linear ramp I = a x + c y shifted by (dx, dy) per frame: per pixel -I_t grad I equals
  (grad I grad I^T) (dx, dy) with grad I = (a, c), so every patch's flow is exactly
  n (a, c) (a dx + c dy) / (n (a^2 + c^2) + eps) (n = pixels x channels); the last frame gets
  zeros."""
  a, c, dx, dy, eps, size, patch = 0.01, 0.02, 1.5, -2.0, 1e-2, 32, 8
  ys, xs = np.mgrid[:size, :size].astype(np.float64)
  frames = np.stack([a * (xs - t * dx) + c * (ys - t * dy) for t in range(3)])
  frames = np.repeat(frames[None, :, :, :, None], 3, axis=-1)  # [1, 3, 32, 32, 3]
  flow = np.asarray(patch_skip.normal_flow(jnp.asarray(frames, jnp.float32), patch, eps=eps))
  assert flow.shape == (1, 3, (size // patch) ** 2, 2)
  np.testing.assert_array_equal(flow[:, -1], 0.0)
  n = patch * patch * 3
  expected = np.array([a, c]) * (a * dx + c * dy) * n / ((a * a + c * c) * n + eps)
  np.testing.assert_allclose(flow[0, :2], np.broadcast_to(expected, (2, 16, 2)), rtol=1e-4)


def test_normal_flow_is_blind_to_colour_and_contrast():
  """Permuting the colour channels or inverting the clip (a dark object on a light background
  instead of a light one on a dark background) leaves the normal flow unchanged."""
  frames = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 16, 16, 3)), jnp.float32)
  flow = patch_skip.normal_flow(frames, 8)
  np.testing.assert_allclose(patch_skip.normal_flow(frames[..., ::-1], 8), flow,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(patch_skip.normal_flow(-frames, 8), flow, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(flow[:, :-1])).max() > 0.1


def test_normal_flow_gives_the_direction_of_rendered_shapes_of_any_colour():
  """shapes_video clips of the held-out `test` compositions: the patch-mean normal flow points the
  way the objects move, whatever their colour (exactly zero for still clips)."""
  from videococa.projects.shapes import scenes as shapes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  expected = dict(left=(-1, 0), right=(1, 0), up=(0, -1), down=(0, 1))
  seen = set()
  for _ in range(60):
    spec = shapes.sample_clip(rng, "test", num_frames=16, height=64, width=64)
    frames = jnp.asarray(shapes.render(spec)[None, ::2], jnp.float32) / 127.5 - 1.0
    mean = np.asarray(patch_skip.normal_flow(frames, 8)).mean(axis=(0, 1, 2))
    if spec.motion == "still":
      np.testing.assert_array_equal(mean, 0.0)
    elif spec.motion in expected:
      axis = int(expected[spec.motion][0] == 0)
      assert np.sign(mean[axis]) == sum(expected[spec.motion]), (spec, mean)
      assert abs(mean[axis]) > 5 * abs(mean[1 - axis]), (spec, mean)
      seen.add(spec.objects[0].color)
  assert len(seen) >= 4


def test_joint_space_time_at_init_equals_per_frame_encoding(image_model):
  """With the temporal embedding at its zero init, joint attention over a static clip (the same
  frame repeated) gives each frame exactly its per-frame tokens: duplicated keys do not change a
  softmax average."""
  model_img, params_img = image_model
  model = coca.Model(**_video_config("joint_space_time"))
  frames, tokens = _data(1)
  params = model.init(jax.random.key(1), frames, tokens)["params"]
  params = _with_shared(jax.tree.map(lambda x: getattr(x, "value", x), params,
                                     is_leaf=lambda x: hasattr(x, "value")), params_img)
  static = jnp.repeat(frames, NUM_FRAMES, axis=1)
  joint_tokens = model.apply({"params": params}, static, method=lambda m, f: m.visual(f))
  frame_tokens = model_img.apply({"params": params_img}, frames, method=lambda m, f: m.visual(f))
  for t in range(NUM_FRAMES):
    np.testing.assert_allclose(joint_tokens[:, t], frame_tokens[:, 0], atol=2e-5)
  # A non-zero temporal embedding breaks the equality: it really is used.
  params["visual"]["temporal_embedding"] = jax.random.normal(
      jax.random.key(0), params["visual"]["temporal_embedding"].shape)
  moved = model.apply({"params": params}, static, method=lambda m, f: m.visual(f))
  assert not np.allclose(moved[:, 0], frame_tokens[:, 0], atol=1e-3)


def test_too_many_frames_error_names_the_field():
  model = coca.Model(**_video_config("factorized"))
  frames, tokens = _data(1)
  variables = model.init(jax.random.key(0), frames, tokens)
  with pytest.raises(ValueError, match="model.video.num_frames=4"):
    model.apply(variables, _data(NUM_FRAMES + 1)[0], tokens)


def _train_config(mode, **overrides):
  config = config_utils.load_config("configs/coca.py:tiny")
  config.model.video = dict(variant="factorized", num_frames=2, temporal_embedding=False,
                            temporal_depth=1)
  config.model.token_adapter = dict(name="patch_skip")
  config.extensions = ("videococa.projects.shapes.patch_skip",)
  config.input.num_frames = 2
  config.input.batch_size = 8
  config.mesh = dict(data=1)
  config.training_mode = mode
  config.optimizer.warmup_steps = 1
  config.update(overrides)
  return config


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lit", "frozen"])
def test_frozen_parameters_are_bit_identical_after_training(mode):
  config = _train_config(mode)
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh))
  state = trainer.init_state()
  before = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  frozen = traverse_util.flatten_dict(trainer.frozen, sep="/")
  rng = np.random.default_rng(0)
  from videococa.data import inputs  # pylint: disable=g-import-not-at-top
  for _ in range(3):
    batch = inputs.random_batch(rng, 8, 2, 32, 13, 64)
    state, _ = trainer.step(state, sharding.put_batch(batch, trainer.mesh))
  after = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  assert any(frozen.values()) and not all(frozen.values())
  for path, is_frozen in frozen.items():
    if is_frozen:
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
    else:
      assert not np.array_equal(after[path], before[path]), path
  # LiT freezes exactly the image encoder; 'frozen' trains only poolers / new temporal parts.
  trained = {p for p, f in frozen.items() if not f}
  if mode == "lit":
    assert {p for p in frozen if p.startswith("visual/")} == {p for p, f in frozen.items() if f}
  else:
    assert all(p.startswith(("pooling/", "image_proj/", "temporal_encoder/", "adapter/"))
               for p in trained)
  # Frozen parameters carry no optimizer state (Adam moments only for the trainable ones).
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state))
  trainable = sum(before[p].size for p in trained)
  assert moments < 2 * trainable + 100


@pytest.mark.slow
def test_frozen_ft_switches_stage_at_the_boundary(tmp_path):
  config = _train_config("frozen_ft", total_steps=4, frozen_ft_boundary=2, checkpoint_every=2,
                         log_every=1)
  assert optim.stage_of(config, 2) == 0 and optim.stage_of(config, 3) == 1
  summary = train.train(config, str(tmp_path))
  assert summary["end_step"] == 4
  params = {s: traverse_util.flatten_dict(checkpoint.load_params(str(tmp_path), s)[0], sep="/")
            for s in (2, 4)}
  kernel = "visual/encoder/layers/mlp/fc1/kernel"
  first = trainer_lib.Trainer(config, sharding.make_mesh(config.mesh)).init_state()
  start = traverse_util.flatten_dict(jax.device_get(first.params), sep="/")
  np.testing.assert_array_equal(params[2][kernel], start[kernel])  # Frozen in stage 0...
  assert not np.array_equal(params[4][kernel], params[2][kernel])  # ...fine-tuned in stage 1.


@pytest.mark.slow
def test_inflation_copies_shared_resizes_positions_and_reports_new(tmp_path, image_model):
  _, params_img = image_model
  checkpoint.save_params(str(tmp_path / "image"), params_img, dict(model_name="coca"))
  cfg = _video_config("factorized")
  cfg.vision.image_size = 48  # 6x6 patches instead of 4x4.
  model = coca.Model(**cfg)
  init = model.init(jax.random.key(3), jnp.zeros((1, 2, 48, 48, 3)), _data(1)[1][:1])["params"]
  init = jax.tree.map(lambda x: getattr(x, "value", x), init, is_leaf=lambda x: hasattr(x, "value"))
  params, report = coca.load(init, str(tmp_path / "image"), cfg)
  flat, flat_img = (traverse_util.flatten_dict(p, sep="/") for p in (params, params_img))
  for path in report["copied"]:
    np.testing.assert_array_equal(flat[path], flat_img[path])
  assert len(report["copied"]) == len(flat_img) - 1
  assert report["resized"] == ["visual/pos_embedding (16, 32) -> (36, 32)"]
  assert flat["visual/pos_embedding"].shape == (36, 32)
  assert report["new"] and all(p.startswith("temporal_encoder/") for p in report["new"])
  cfg.text.width = 16
  bad = coca.Model(**cfg).init(jax.random.key(0), jnp.zeros((1, 1, 48, 48, 3)), _data(1)[1][:1])
  with pytest.raises(ValueError, match="the checkpoint has shape"):
    coca.load(jax.tree.map(lambda x: getattr(x, "value", x), bad["params"],
                           is_leaf=lambda x: hasattr(x, "value")), str(tmp_path / "image"), cfg)


@pytest.mark.slow
def test_dont_load_keeps_fresh_parameters_and_rejects_unmatched_patterns(tmp_path, image_model):
  _, params_img = image_model
  checkpoint.save_params(str(tmp_path / "image"), params_img, dict(model_name="coca"))
  cfg = _video_config("mean_pool")
  init = coca.Model(**cfg).init(jax.random.key(5), *_data(NUM_FRAMES))["params"]
  init = jax.tree.map(lambda x: getattr(x, "value", x), init, is_leaf=lambda x: hasattr(x, "value"))
  patterns = (r"^text_encoder/", r"^token_embedding/")
  params, report = coca.load(init, str(tmp_path / "image"), cfg, dont_load=patterns)
  flat, flat_init, flat_img = (traverse_util.flatten_dict(p, sep="/")
                               for p in (params, init, params_img))
  fresh = [p for p in flat if p.startswith(("text_encoder/", "token_embedding/"))]
  assert fresh and sorted(report["not_loaded"]) == sorted(fresh)
  for path in fresh:
    np.testing.assert_array_equal(flat[path], flat_init[path])
  assert not np.array_equal(flat["token_embedding/embedding"], flat_img["token_embedding/embedding"])
  assert "text_proj/kernel" in report["copied"]
  np.testing.assert_array_equal(flat["text_proj/kernel"], flat_img["text_proj/kernel"])
  with pytest.raises(UserError, match=r"match no parameter.*init_dont_load"):
    coca.load(init, str(tmp_path / "image"), cfg, dont_load=(r"^text_encoderr/",))
