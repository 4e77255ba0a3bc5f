"""CoCa model: shapes for every preset, parameter counts, causal masks, padding, poolers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videococa.models import coca, poolers, presets, vit


def _inputs(cfg, batch=2, seed=0, num_frames=1):
  rng = np.random.default_rng(seed)
  s = cfg.vision.image_size
  frames = rng.uniform(-1, 1, (batch, num_frames, s, s, 3)).astype(np.float32)
  tokens = rng.integers(4, cfg.vocab_size, (batch, cfg.max_len)).astype(np.int32)
  tokens[:, 0] = 2
  return jnp.asarray(frames), jnp.asarray(tokens)


@pytest.fixture(scope="module")
def tiny():
  cfg = presets.get("coca_tiny")
  model = coca.Model(**cfg)
  params = model.init(jax.random.key(0), *_inputs(cfg))["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  return cfg, model, params


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,expected", [("coca_base", 383e6), ("coca_large", 787e6),
                                           ("coca_giant", 2.1e9)])
def test_paper_sizes_parameter_count(name, expected):
  cfg = presets.get(name)
  model = coca.Model(**cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *map(jnp.asarray, _inputs(cfg, 1)))
  assert abs(_num_params(shapes) - expected) / expected < 0.02
  if name == "coca_giant":  # Its image encoder is the paper's 1B, its decoder 1.1B (tied).
    vision = _num_params(shapes["params"]["visual"])
    assert abs(vision - 1.0e9) / 1.0e9 < 0.03, vision


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_output_shapes_every_preset(name):
  cfg = presets.get(name)
  model = coca.Model(**cfg)
  frames, tokens = _inputs(cfg, batch=3)
  variables = jax.eval_shape(model.init, jax.random.key(0), frames, tokens)
  out = jax.eval_shape(model.apply, variables, frames, tokens)
  assert out["image_emb"].shape == (3, cfg.embed_dim)
  assert out["text_emb"].shape == (3, cfg.embed_dim)
  if not cfg.decoder.depth:  # CLIP dual encoders have no captioning decoder.
    assert "hidden" not in out
    return
  assert out["hidden"].shape == (3, cfg.max_len, cfg.text.width)
  logits = jax.eval_shape(lambda v, h: model.apply(v, h, method="logits"), variables, out["hidden"])
  assert logits.shape == (3, cfg.max_len, cfg.vocab_size)


def test_forward_values_are_normalised_and_finite(tiny):
  cfg, model, params = tiny
  out = model.apply({"params": params}, *_inputs(cfg))
  for key in ("image_emb", "text_emb"):
    np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)
  assert np.all(np.isfinite(out["hidden"]))
  np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)


def test_outputs_depend_on_the_inputs(tiny):
  """Every example's embeddings and captioning tokens are its own (no input is ignored)."""
  cfg, model, params = tiny
  frames, tokens = _inputs(cfg, batch=3)
  image_emb, caption = model.apply({"params": params}, frames, method="encode_visual")
  text_emb, features = model.apply({"params": params}, tokens, method="encode_text")
  for x in (image_emb, caption, text_emb, features):
    assert np.abs(np.asarray(x[0]) - np.asarray(x[1])).max() > 1e-3
    assert np.abs(np.asarray(x[1]) - np.asarray(x[2])).max() > 1e-3


def test_image_is_a_one_frame_clip(tiny):
  cfg, model, params = tiny
  frames, tokens = _inputs(cfg)
  a = model.apply({"params": params}, frames, tokens)
  b = model.apply({"params": params}, frames[:, 0], tokens)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_uint8_frames_are_normalised_with_the_configs_pixel_statistics(tiny):
  """uint8 pixels go through `(x / 255 - image_mean) / image_std` inside the model; floats are
  taken as normalised. Checked against numpy, at the default [-1, 1] and at CLIP's statistics."""
  cfg, _, params = tiny
  pixels = np.random.default_rng(0).integers(0, 256, (2, 1, 32, 32, 3)).astype(np.uint8)
  for mean, std in (((0.5,) * 3, (0.5,) * 3), (presets.CLIP_IMAGE_MEAN, presets.CLIP_IMAGE_STD)):
    model = coca.Model(**{**cfg, "image_mean": mean, "image_std": std})
    expected = (pixels / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(coca.normalize_pixels(pixels, mean, std), expected, atol=1e-6)
    from_uint8 = model.apply({"params": params}, pixels, method="encode_visual")[0]
    from_float = model.apply({"params": params}, expected.astype(np.float32),
                             method="encode_visual")[0]
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
  clip_model = coca.Model(**{**cfg, "image_mean": presets.CLIP_IMAGE_MEAN})
  default = coca.Model(**cfg).apply({"params": params}, pixels, method="encode_visual")[0]
  assert np.abs(clip_model.apply({"params": params}, pixels, method="encode_visual")[0]
                - default).max() > 1e-3


@pytest.mark.slow
def test_causal_masks_leak_nothing(tiny):
  """Changing token t+1 leaves every output at positions <= t unchanged."""
  cfg, model, params = tiny
  frames, tokens = _inputs(cfg)
  base = model.apply({"params": params}, frames, tokens)
  features = model.apply({"params": params}, tokens, method="encode_text")[1]
  for t in range(cfg.max_len - 1):
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % cfg.vocab_size)
    out = model.apply({"params": params}, frames, changed)
    np.testing.assert_allclose(out["hidden"][:, :t + 1], base["hidden"][:, :t + 1], atol=1e-6)
    changed_features = model.apply({"params": params}, changed, method="encode_text")[1]
    np.testing.assert_allclose(changed_features[:, :t + 1], features[:, :t + 1], atol=1e-6)
    assert not np.allclose(out["hidden"][:, t + 1], base["hidden"][:, t + 1])


@pytest.mark.slow
def test_padding_does_not_change_the_cls_embedding(tiny):
  cfg, model, params = tiny
  caption = np.array([[2, 10, 11, 12, 3]], np.int32)  # BOS w w w EOS
  embeddings = []
  for length in (5, 8, cfg.max_len):  # Same caption, more and more padding.
    tokens = np.zeros((1, length), np.int32)
    tokens[:, :5] = caption
    embeddings.append(model.apply({"params": params}, jnp.asarray(tokens), method="encode_text")[0])
  for emb in embeddings[1:]:
    np.testing.assert_allclose(emb, embeddings[0], atol=1e-6)
  # ...while the caption's content does change it.
  other = np.zeros((1, 8), np.int32)
  other[:, :5] = [[2, 10, 11, 13, 3]]
  emb_other = model.apply({"params": params}, jnp.asarray(other), method="encode_text")[0]
  assert not np.allclose(emb_other, embeddings[0], atol=1e-4)


@pytest.mark.slow
def test_openclip_legacy_cls_mask_differs_on_padded_captions():
  """The legacy mask is the exact one shifted by one key (checked exactly by the open_clip parity
  test); on a padded caption the two must give different CLS embeddings."""
  cfg = presets.get("coca_tiny")
  tokens = np.zeros((1, cfg.max_len), np.int32)
  tokens[:, :4] = [[2, 10, 11, 3]]
  embs = {}
  for mode in ("exact", "openclip_legacy"):
    cfg.text.cls_mask = mode
    model = coca.Model(**cfg)
    variables = model.init(jax.random.key(0), *_inputs(cfg))
    embs[mode] = model.apply(variables, jnp.asarray(tokens), method="encode_text")[0]
  assert not np.allclose(embs["exact"], embs["openclip_legacy"], atol=1e-4)


@pytest.mark.parametrize("mode", ["cascade", "parallel", "single"])
def test_pooler_modes(mode):
  cfg = presets.get("coca_tiny")
  cfg.pooler.mode = mode
  model = coca.Model(**cfg)
  frames, tokens = _inputs(cfg)
  variables = model.init(jax.random.key(0), frames, tokens)
  image_emb, caption = model.apply(variables, frames, method="encode_visual")
  assert image_emb.shape == (2, cfg.embed_dim)
  num_caption = cfg.pooler.num_queries - (mode == "single")
  assert caption.shape == (2, num_caption, cfg.pooler.width)
  names = set(variables["params"]["pooling"])
  expected = {"single": {"pooler"}}.get(mode, {"caption_pooler", "contrastive_pooler"})
  assert names == expected


def test_posemb_sincos_2d_closed_form():
  table = np.asarray(poolers.posemb_sincos_2d(16, 8))  # 4x4 grid, 2 frequencies per quarter.
  omega = np.array([1.0, 1e-2])
  for token, (row, col) in enumerate((r, c) for r in range(4) for c in range(4)):
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega),
                               np.cos(row * omega)])
    np.testing.assert_allclose(table[token], expected, atol=1e-6)
  with pytest.raises(ValueError, match="square grid"):
    poolers.posemb_sincos_2d(17, 8)  # A class token in front of a 4x4 grid.


@pytest.mark.slow
@pytest.mark.parametrize("position_encoding", ["none", "sincos2d"])
def test_pooler_positions_make_it_see_where(position_encoding):
  """Cross-attention pooling is blind to token order; sin-cos positions make it see the layout."""
  pooling = poolers.VisualPooling(num_queries=4, width=16, num_heads=2,
                                  position_encoding=position_encoding)
  tokens = jax.random.normal(jax.random.key(0), (2, 2 * 9, 16))  # 2 frames of 3x3 tokens.
  params = pooling.init(jax.random.key(1), tokens, 2)
  shuffled = tokens.reshape(2, 2, 9, 16)[:, :, ::-1].reshape(tokens.shape)  # Mirror each frame.
  (pooled, caption), (pooled_s, caption_s) = (pooling.apply(params, t, 2) for t in
                                              (tokens, shuffled))
  same = np.allclose(pooled, pooled_s, atol=1e-5) and np.allclose(caption, caption_s, atol=1e-5)
  assert same == (position_encoding == "none")


@pytest.mark.slow
def test_tied_embedding_and_activations():
  cfg = presets.get("coca_tiny")
  cfg.tie_embedding = True
  cfg.mlp_act = "quick_gelu"
  model = coca.Model(**cfg)
  frames, tokens = _inputs(cfg)
  variables = model.init(jax.random.key(0), frames, tokens)
  assert "vocab_proj" not in variables["params"]
  hidden = model.apply(variables, frames, tokens)["hidden"]
  logits = model.apply(variables, hidden, method="logits")
  embedding = variables["params"]["token_embedding"]["embedding"].value
  np.testing.assert_allclose(logits, jnp.einsum("bld,vd->blv", hidden, embedding), rtol=1e-5,
                             atol=1e-5)


def test_position_embedding_is_interpolated_for_other_image_sizes(tiny):
  cfg, model, params = tiny
  frames, tokens = _inputs(cfg)
  big = jax.image.resize(frames, (2, 1, 48, 48, 3), "bilinear")
  image_emb, caption = model.apply({"params": params}, big, method="encode_visual")
  assert image_emb.shape == (2, cfg.embed_dim) and np.all(np.isfinite(caption))
  # A linear ramp over the grid stays a linear ramp when resized.
  ramp = np.arange(4, dtype=np.float32)[:, None] * np.ones((4, 3), np.float32)
  posemb = np.concatenate([np.full((1, 3), 9.0), np.repeat(ramp[:, None], 4, 1).reshape(16, 3)])
  resized = np.asarray(vit.resize_posemb(jnp.asarray(posemb), (4, 4), (8, 8), num_prefix=1))
  assert resized.shape == (65, 3)
  np.testing.assert_array_equal(resized[0], 9.0)
  rows = resized[1:].reshape(8, 8, 3)[:, 0, 0]
  assert np.all(np.diff(rows) >= 0) and rows[0] < 0.01 and rows[-1] > 2.99
  same = jnp.asarray(posemb)
  assert vit.resize_posemb(same, (4, 4), (4, 4), num_prefix=1) is same


def test_bad_image_size_error_names_the_field(tiny):
  cfg, model, params = tiny
  frames = jnp.zeros((1, 1, 30, 30, 3))
  with pytest.raises(ValueError, match="patch_size"):
    model.apply({"params": params}, frames, method="encode_visual")
