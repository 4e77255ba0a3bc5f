"""Exact weight conversion between open_clip (CoCa, CLIP with a ViT) and videococa's CoCa model.

`to_videococa(state_dict, config)` turns an open_clip `state_dict()` into our parameters and
`to_openclip(params, config)` does the reverse; both only reshape and transpose, so a round trip is
bitwise exact. `config` is our model ConfigDict: a preset named in `OPENCLIP_PRESETS`, or
`config_from_openclip(open_clip_model_cfg)` for any other open_clip ViT CoCa/CLIP configuration.

Correspondence (per layer, our scanned parameters stack open_clip's layers on axis 0):
  Linear weight [out, in]              <-> Dense kernel [in, out]
  Conv2d weight [out, 3, p, p]         <-> Conv kernel [p, p, 3, out]
  MultiheadAttention in_proj [3 h*d, in] (or q/k/v_proj_weight when key and query widths differ)
                                       <-> query/key/value kernels [in, h, d], biases [h, d]
  out_proj.weight [out, h*d]           <-> out kernel [h, d, out]
  LayerNorm weight / bias              <-> scale / bias
Parameters named in the same layout (embeddings, `proj`, `text_projection`) are copied as they are.

What the weights do not carry: open_clip models expect pixels normalised with a mean and std
(CLIP's, or a config .json's 'preprocess_cfg'), which our config holds as `image_mean` /
`image_std` (the model applies them to uint8 frames), and text from open_clip's CLIP BPE tokenizer
(`config.input.tokenizer='clip_bpe'`; start 49406, end 49407, padding 0) padded to the full context
length: our CoCa CLS token always uses the last position row, where open_clip puts it only for
full-length input.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterable, Mapping, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import traverse_util

from videococa.errors import MissingPathError, UserError
from videococa.models import coca, presets

# open_clip model name -> our preset (videococa/models/presets.py).
OPENCLIP_PRESETS = {
    "coca_ViT-B-32": "openclip_coca_vit_b32",
    "coca_ViT-L-14": "openclip_coca_vit_l14",
    "ViT-B-32": "openclip_vit_b32",
    "ViT-B-16": "openclip_vit_b16",
}

# Per kind of parameter: (axis permutation taking the open_clip array to ours or None, the shape of
# our array with the axes open_clip merges merged). Ours = open_clip.transpose(perm).reshape(ours).
_KINDS = {
    "copy": (None, lambda s: s),
    "dense": ((1, 0), lambda s: s),  # Linear [out, in] <-> [in, out].
    "conv": ((2, 3, 1, 0), lambda s: s),  # Conv2d [out, in, kh, kw] <-> [kh, kw, in, out].
    "heads_in": ((1, 0), lambda s: (s[0], s[1] * s[2])),  # [h*d, in] <-> [in, h, d].
    "heads_bias": (None, lambda s: (s[0] * s[1],)),  # [h*d] <-> [h, d].
    "heads_out": ((1, 0), lambda s: (s[0] * s[1], s[2])),  # [out, h*d] <-> [h, d, out].
}

# Non-persistent buffers some open_clip versions still put into saved state_dicts.
_BUFFERS = ("attn_mask",)

_MAX_LISTED = 20


class _Entry(NamedTuple):
  """One of our parameters and the open_clip tensor (or equal slice `part` of `parts`) it is."""
  path: tuple[str, ...]
  key: str  # '{i}' stands for the layer index of a scanned parameter.
  kind: str
  part: int = 0
  parts: int = 1


# ---------------------------------------------------------------------------------------------
# Configurations.


def get_config(model: str) -> ml_collections.ConfigDict:
  """Our model config for an open_clip model name (`OPENCLIP_PRESETS`) or open_clip config .json.

  The .json is an open_clip model config (`open_clip/model_configs/*.json`) or an
  `open_clip_config.json` holding one under 'model_cfg'. Its 'preprocess_cfg' mean / std, if any,
  replace CLIP's as `image_mean` / `image_std`.
  """
  if model in OPENCLIP_PRESETS:
    return presets.get(OPENCLIP_PRESETS[model])
  cfg = _read_config_json(model)
  config = config_from_openclip(cfg.get("model_cfg", cfg))
  preprocess = cfg.get("preprocess_cfg") or cfg.get("model_cfg", {}).get("preprocess_cfg", {})
  config.image_mean = tuple(preprocess.get("mean", config.image_mean))
  config.image_std = tuple(preprocess.get("std", config.image_std))
  return config


def _read_config_json(model: str) -> dict:
  if not model.endswith(".json"):
    raise UserError(f"Unknown open_clip model {model!r}; known: {sorted(OPENCLIP_PRESETS)}, or "
                    "pass the path of an open_clip model config .json.")
  if not os.path.isfile(model):
    raise MissingPathError(f"open_clip model config {model} does not exist.")
  with open(model) as f:
    return json.load(f)


# open_clip options that our model expresses only at one value (open_clip's default).
_FIXED = {
    "ls_init_value": None, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None, "hf_model_name": None,
    "no_causal_mask": False, "proj_type": "linear", "proj_bias": False, "init_logit_bias": None,
    "nonscalar_logit_scale": False,
}
# Per config section: the fields read below, or that change neither the weights nor what they
# compute (training-only, tokenizer-only, or unused by open_clip's code).
_ACCEPTED = {
    "": {"embed_dim", "quick_gelu", "custom_text", "preprocess_cfg", "vision_cfg", "text_cfg",
         "multimodal_cfg"},
    "vision_cfg.": {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size",
                    "attentional_pool", "attn_pooler_queries", "attn_pooler_heads", "pool_type",
                    "output_tokens", "patch_dropout"},
    "text_cfg.": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
                  "embed_cls", "pad_id", "eos_id", "pool_type", "output_tokens",
                  "hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs"},
    # open_clip's decoder takes its vocabulary from text_cfg, always has 4x MLPs and ignores the
    # pooler / head-size fields of MultimodalCfg.
    "multimodal_cfg.": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
                        "dim_head", "n_queries", "attn_pooler_heads"},
}


def config_from_openclip(cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Our model config computing exactly what open_clip's model config `cfg` computes.

  `cfg` has open_clip's fields ('embed_dim', 'vision_cfg', 'text_cfg', optional 'multimodal_cfg',
  'quick_gelu', ...); with 'multimodal_cfg' it is a CoCa, otherwise a CLIP. Raises a ValueError
  naming every option our model cannot express (e.g. layer scale, a timm or Hugging Face tower).
  """
  vision, text = cfg["vision_cfg"], cfg["text_cfg"]
  decoder = cfg.get("multimodal_cfg")
  sections = {"": cfg, "vision_cfg.": vision, "text_cfg.": text, "multimodal_cfg.": decoder or {}}
  problems = [problem for prefix, section in sections.items()
              for problem in _option_problems(prefix, section)]
  width = vision.get("width", 768)
  image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
  if not isinstance(image_size, int) or not isinstance(patch_size, int):
    problems.append(f"vision_cfg.image_size={image_size!r} / patch_size={patch_size!r}: only "
                    "square (int) sizes are supported")
  if vision.get("pool_type", "tok") != "tok":
    problems.append(f"vision_cfg.pool_type={vision['pool_type']!r}: only 'tok' is supported")
  common = dict(
      embed_dim=cfg["embed_dim"], image_size=image_size, patch_size=patch_size,
      vision_width=width, vision_depth=vision.get("layers", 12),
      vision_heads=width // vision.get("head_width", 64), text_width=text.get("width", 512),
      text_depth=text.get("layers", 12), text_heads=text.get("heads", 8),
      vocab_size=text.get("vocab_size", 49408), context_length=text.get("context_length", 77),
      vision_mlp_ratio=vision.get("mlp_ratio", 4.0), text_mlp_ratio=text.get("mlp_ratio", 4.0),
      mlp_act="quick_gelu" if cfg.get("quick_gelu") else "gelu")
  if decoder is not None:
    problems += _coca_problems(cfg, vision, text, decoder)
    config = presets.openclip_coca(
        **common, pad_id=text.get("pad_id", 0), decoder_depth=decoder.get("layers", 12),
        decoder_heads=decoder.get("heads", 8), pooler_heads=vision.get("attn_pooler_heads", 8),
        pooler_queries=vision.get("attn_pooler_queries", 256))
  else:
    problems += _clip_problems(vision, text)
    pool = text.get("pool_type", "argmax")
    # 'argmax' pools at the largest token id: CLIP's end-of-text, the last id of its vocabulary.
    eos_id = text.get("eos_id", 2) if pool == "eos" else common["vocab_size"] - 1
    config = presets.openclip_clip(**common, eos_id=eos_id)
  if problems:
    raise UserError("open_clip config not expressible by videococa's model: "
                     + "; ".join(problems))
  return config


def _option_problems(prefix: str, section: Mapping[str, Any]) -> list[str]:
  problems = []
  for name, value in section.items():
    if name in _ACCEPTED[prefix]:
      continue
    if name not in _FIXED:
      problems.append(f"{prefix}{name}={value!r} is an option the converter does not know")
    elif value != _FIXED[name] and not (name == "block_type" and value == "default"):
      problems.append(f"{prefix}{name}={value!r} (only {_FIXED[name]!r} is supported)")
  return problems


def _coca_problems(cfg, vision, text, decoder) -> list[str]:
  problems = []
  if vision.get("attentional_pool") is not True:
    problems.append(f"vision_cfg.attentional_pool={vision.get('attentional_pool')!r}: a CoCa needs "
                    "true (open_clip's single pooler; 'parallel' / 'cascade' are not supported)")
  if not text.get("embed_cls"):
    problems.append("text_cfg.embed_cls must be true for a CoCa")
  widths = {cfg["embed_dim"], text.get("width", 512), decoder.get("width", 512)}
  if len(widths) > 1:
    problems.append(f"embed_dim, text_cfg.width and multimodal_cfg.width must be equal "
                    f"(open_clip's decoder reads both towers' outputs), found {sorted(widths)}")
  return problems


def _clip_problems(vision, text) -> list[str]:
  problems = []
  if vision.get("attentional_pool"):
    problems.append("vision_cfg.attentional_pool is only supported for a CoCa (with "
                    "multimodal_cfg)")
  if text.get("embed_cls"):
    problems.append("text_cfg.embed_cls is only supported for a CoCa (with multimodal_cfg)")
  if text.get("pool_type", "argmax") not in ("argmax", "eos"):
    problems.append(f"text_cfg.pool_type={text['pool_type']!r}: only 'argmax' and 'eos' are "
                    "supported")
  return problems


def _is_coca(config) -> bool:
  return bool(config["decoder"]["depth"])


def _check_expressible(config) -> None:
  """Raises unless `config` computes what open_clip does, where parameter shapes do not show it."""
  flat = traverse_util.flatten_dict(json.loads(json.dumps(_to_dict(config))), sep=".")
  required = {"ln_eps": 1e-5}
  if _is_coca(config):
    required.update({"text.cls_mask": "openclip_legacy",
                     "decoder.layout": ["self_attn", "mlp", "cross_attn", "mlp"]})
  problems = [f"model.{name}={flat.get(name)!r} (open_clip: {value!r})"
              for name, value in required.items() if flat.get(name) != value]
  if flat.get("mlp_act") not in ("gelu", "quick_gelu"):
    problems.append(f"model.mlp_act={flat.get('mlp_act')!r} (open_clip: 'gelu' or 'quick_gelu')")
  if problems:
    raise UserError("The model config does not compute what open_clip does: "
                     + "; ".join(problems) + ". Use an openclip_* preset or config_from_openclip.")


def _to_dict(config) -> dict:
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


# ---------------------------------------------------------------------------------------------
# Parameter correspondence.


def expected_shapes(config) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our parameter paths -> shapes for model `config` (no arrays are allocated)."""
  return dict(_expected_shapes(json.dumps(_to_dict(config), sort_keys=True)))


@functools.lru_cache(maxsize=16)
def _expected_shapes(config_json: str) -> dict[tuple[str, ...], tuple[int, ...]]:
  config = json.loads(config_json)
  variables = jax.eval_shape(coca.Model(**config).init, jax.random.key(0),
                             *coca.init_inputs(config))
  flat = traverse_util.flatten_dict(nn.unbox(variables)["params"])
  return {path: tuple(x.shape) for path, x in flat.items()}


def _layer_norm(ours, theirs):
  return [_Entry((*ours, "scale"), f"{theirs}.weight", "copy"),
          _Entry((*ours, "bias"), f"{theirs}.bias", "copy")]


def _mlp(ours, theirs):
  return [_Entry((*ours, fc, "kernel"), f"{theirs}.{c}.weight", "dense")
          for fc, c in (("fc1", "c_fc"), ("fc2", "c_proj"))] + [
              _Entry((*ours, fc, "bias"), f"{theirs}.{c}.bias", "copy")
              for fc, c in (("fc1", "c_fc"), ("fc2", "c_proj"))]


def _attention(ours, theirs, packed: bool):
  """torch MultiheadAttention: one packed in_proj_weight unless key/value width != query width."""
  entries = [_Entry((*ours, "out", "kernel"), f"{theirs}.out_proj.weight", "heads_out"),
             _Entry((*ours, "out", "bias"), f"{theirs}.out_proj.bias", "copy")]
  for i, (name, short) in enumerate((("query", "q"), ("key", "k"), ("value", "v"))):
    entries.append(_Entry((*ours, name, "bias"), f"{theirs}.in_proj_bias", "heads_bias", i, 3))
    if packed:
      entries.append(_Entry((*ours, name, "kernel"), f"{theirs}.in_proj_weight", "heads_in", i, 3))
    else:
      entries.append(_Entry((*ours, name, "kernel"), f"{theirs}.{short}_proj_weight", "heads_in"))
  return entries


def _resblock(ours, theirs, cross: bool = False):
  """open_clip ResidualAttentionBlock `theirs` -> our (self_attn, mlp) or (cross_attn, mlp_2)."""
  attn, mlp = ("cross_attn", "mlp_2") if cross else ("self_attn", "mlp")
  entries = (_layer_norm((*ours, f"{attn}_norm"), f"{theirs}.ln_1")
             + _attention((*ours, attn), f"{theirs}.attn", packed=True)
             + _layer_norm((*ours, f"{mlp}_norm"), f"{theirs}.ln_2")
             + _mlp((*ours, mlp), f"{theirs}.mlp"))
  if cross:
    entries += _layer_norm((*ours, "cross_attn_kv_norm"), f"{theirs}.ln_1_kv")
  return entries


def _entries(config) -> list[_Entry]:
  """Every one of our parameters with its open_clip source, for a CoCa or a CLIP `config`."""
  coca_model = _is_coca(config)
  visual = [_Entry(("visual", "patch_embed", "kernel"), "visual.conv1.weight", "conv"),
            _Entry(("visual", "class_embedding"), "visual.class_embedding", "copy"),
            _Entry(("visual", "pos_embedding"), "visual.positional_embedding", "copy"),
            _Entry(("image_proj", "kernel"), "visual.proj", "copy"),
            *_layer_norm(("visual", "pre_norm"), "visual.ln_pre"),
            *_resblock(("visual", "encoder", "layers"), "visual.transformer.resblocks.{i}")]
  if coca_model:
    pool = ("pooling", "pooler")
    packed = config["pooler"]["width"] == config["vision"]["width"]
    visual += [_Entry((*pool, "query"), "visual.attn_pool.query", "copy"),
               *_layer_norm((*pool, "query_norm"), "visual.attn_pool.ln_q"),
               *_layer_norm((*pool, "kv_norm"), "visual.attn_pool.ln_k"),
               *_attention((*pool, "attn"), "visual.attn_pool.attn", packed),
               *_layer_norm((*pool, "out_norm"), "visual.ln_post")]
  else:
    visual += _layer_norm(("visual", "final_norm"), "visual.ln_post")
  t = "text." if coca_model else ""  # CLIP keeps its text tower's parameters at the top level.
  text = [_Entry(("token_embedding", "embedding"), f"{t}token_embedding.weight", "copy"),
          _Entry(("text_encoder", "pos_embedding"), f"{t}positional_embedding", "copy"),
          _Entry(("text_proj", "kernel"), f"{t}text_projection", "copy"),
          *_resblock(("text_encoder", "encoder", "layers"), f"{t}transformer.resblocks.{{i}}"),
          *_layer_norm(("text_encoder", "final_norm"), f"{t}ln_final"),
          _Entry(("logit_scale",), "logit_scale", "copy")]
  if not coca_model:
    return visual + text
  layers = ("text_decoder", "decoder", "layers")
  decoder = [*_resblock(layers, "text_decoder.resblocks.{i}"),
             *_resblock(layers, "text_decoder.cross_attn.{i}", cross=True),
             *_layer_norm(("text_decoder", "final_norm"), "text_decoder.ln_final"),
             _Entry(("vocab_proj", "kernel"), "text_decoder.text_projection", "copy"),
             _Entry(("text_encoder", "cls_embedding"), "text.cls_emb", "copy")]
  return visual + text + decoder


def _correspondence(config):
  """(entries, our shapes) after checking that the entries cover exactly our parameters."""
  _check_expressible(config)
  shapes = expected_shapes(config)
  entries = _entries(config)
  mapped = {e.path for e in entries}
  extra = ["/".join(p) for p in shapes if p not in mapped]
  lacking = ["/".join(p) for p in mapped if p not in shapes]
  if extra or lacking:
    raise UserError(f"The model config's parameters do not correspond to open_clip's: it has "
                     f"{extra} with no open_clip counterpart and lacks {lacking}. Use an "
                     "openclip_* preset or config_from_openclip.")
  return entries, shapes


def openclip_shapes(model_config) -> dict[str, tuple[int, ...]]:
  """open_clip `state_dict()` names -> shapes for our model config (no arrays are allocated)."""
  entries, shapes = _correspondence(model_config)
  return {key: _torch_shape(entry, _layer_shape(entry, shapes[entry.path]))
          for entry in entries for key in _layer_keys(entry, shapes[entry.path])}


def _layer_shape(entry: _Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
  return shape[1:] if "{i}" in entry.key else shape


def _torch_shape(entry: _Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
  """open_clip shape of `entry` given our (one-layer) shape."""
  perm, merge = _KINDS[entry.kind]
  merged = merge(shape)
  out = merged if perm is None else tuple(merged[j] for j in np.argsort(perm))
  return out if entry.parts == 1 else (out[0] * entry.parts, *out[1:])


def _to_ours(x: np.ndarray, entry: _Entry, shape: tuple[int, ...]) -> np.ndarray:
  perm, _ = _KINDS[entry.kind]
  if entry.parts > 1:
    x = np.split(x, entry.parts)[entry.part]
  return (x if perm is None else x.transpose(perm)).reshape(shape)


def _to_torch(y: np.ndarray, entry: _Entry) -> np.ndarray:
  perm, merge = _KINDS[entry.kind]
  x = y.reshape(merge(y.shape))
  return x if perm is None else x.transpose(np.argsort(perm))


def _layer_keys(entry: _Entry, shape) -> list[str]:
  """open_clip names of `entry` (one per layer for a scanned parameter)."""
  if "{i}" not in entry.key:
    return [entry.key]
  return [entry.key.format(i=i) for i in range(shape[0])]


def _to_numpy(x) -> np.ndarray:
  """torch tensors and (jax / numpy) arrays -> numpy; floats as float32 (exact from 16 bits)."""
  if hasattr(x, "detach"):  # A torch tensor; bfloat16 has no numpy counterpart.
    x = x.detach().cpu()
    x = (x.float() if x.is_floating_point() else x).numpy()
  x = np.asarray(x)  # bfloat16 (from safetensors' jax reader) is not a numpy floating subtype.
  return x.astype(np.float32, copy=False) if jax.dtypes.issubdtype(x.dtype, np.floating) else x


def _listing(title: str, items: Iterable[str]) -> str:
  items = list(items)
  more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return f"{title} ({len(items)}):\n  " + "\n  ".join(items[:_MAX_LISTED]) + more


def _raise_problems(what: str, mismatched, missing, unused, fix: str) -> None:
  sections = [_listing(title, items) for title, items in (
      ("shape mismatches", mismatched), ("missing", missing), ("unexpected (not used)", unused))
              if items]
  if sections:
    raise UserError(f"{what}:\n" + "\n".join(sections) + f"\n{fix}")


def to_videococa(state_dict: Mapping[str, Any], model_config) -> dict:
  """open_clip `state_dict` (torch tensors or arrays) -> our params (nested dict of float32 numpy).

  Raises a ValueError listing every shape mismatch ('name: expected (...), found (...)'), every
  missing and every unused open_clip name; `attn_mask` buffers are ignored.
  """
  entries, shapes = _correspondence(model_config)
  state = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _BUFFERS}
  mismatched, missing, used, flat = {}, {}, set(), {}
  for entry in entries:
    shape = shapes[entry.path]
    keys = _layer_keys(entry, shape)
    layer_shape = _layer_shape(entry, shape)
    expected = _torch_shape(entry, layer_shape)
    values = []
    for key in keys:
      if key not in state:
        missing[key] = key
        continue
      used.add(key)
      found = tuple(state[key].shape)
      if found != expected:
        mismatched[key] = f"{key}: expected {expected}, found {found}"
        continue
      values.append(_to_ours(_to_numpy(state[key]), entry, layer_shape))
    if len(values) == len(keys):
      flat[entry.path] = np.stack(values) if "{i}" in entry.key else values[0]
  _raise_problems("The open_clip state_dict does not match the model config",
                  mismatched.values(), missing.values(), sorted(set(state) - used),
                  "Pass the --model / config the checkpoint was trained with.")
  return traverse_util.unflatten_dict(flat)


def to_openclip(params, model_config) -> dict[str, np.ndarray]:
  """Our params (nested dict of arrays) -> open_clip `state_dict()` names and shapes (numpy).

  Raises a ValueError naming every missing, unexpected or wrongly shaped parameter ('a/b/c').
  """
  entries, shapes = _correspondence(model_config)
  flat = traverse_util.flatten_dict(nn.unbox(params))
  mismatched = [f"{'/'.join(p)}: expected {shapes[p]}, found {tuple(np.shape(x))}"
                for p, x in flat.items() if p in shapes and tuple(np.shape(x)) != shapes[p]]
  _raise_problems("The params do not match the model config", mismatched,
                  ["/".join(p) for p in shapes if p not in flat],
                  ["/".join(p) for p in flat if p not in shapes],
                  "Pass the --model / config the params were made with.")
  state, parts = {}, {}
  for entry in entries:
    value = np.asarray(flat[entry.path])
    layers = value if "{i}" in entry.key else value[None]
    for key, layer in zip(_layer_keys(entry, shapes[entry.path]), layers):
      if entry.parts == 1:
        state[key] = _to_torch(layer, entry)
      else:
        parts.setdefault(key, [None] * entry.parts)[entry.part] = _to_torch(layer, entry)
  state.update({key: np.concatenate(pieces) for key, pieces in parts.items()})
  return {key: np.asarray(value, order="C") for key, value in state.items()}


# ---------------------------------------------------------------------------------------------
# Files.


STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def check_state_dict_path(path: str) -> None:
  """Raises unless `path` names a state_dict file format this module reads and writes."""
  if not path.endswith(STATE_DICT_SUFFIXES):
    raise UserError(f"{path}: unknown state_dict file format; use a name ending in one of "
                    f"{STATE_DICT_SUFFIXES}.")


def _import_torch(path: str):
  """torch, needed only for the pickled formats; a one-line error without it."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f"{path}: reading or writing .pt/.pth/.bin files needs PyTorch (`pip install "
                    "torch`); .safetensors files (open_clip_model.safetensors on the Hugging "
                    "Face hub) need no torch.") from None
  return torch


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """open_clip weights from a .safetensors file (read without torch) or a .pt/.pth/.bin file
  (torch.load, weights only; needs PyTorch).

  Accepts a bare state_dict or a training checkpoint dict holding one under 'state_dict', with or
  without DistributedDataParallel's 'module.' prefix. Floats come back as float32.
  """
  check_state_dict_path(path)
  if not os.path.isfile(path):
    raise MissingPathError(f"open_clip checkpoint {path} does not exist.")
  try:
    if path.endswith(".safetensors"):
      # The flax reader: numpy has no bfloat16, jax does.
      from safetensors.flax import load_file  # pylint: disable=g-import-not-at-top
      state = load_file(path)
    else:
      torch = _import_torch(path)
      state = torch.load(path, map_location="cpu", weights_only=True)
      if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Unpickling / header errors.
    raise UserError(f"{path} cannot be read as open_clip weights ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); give the model's "
                    ".safetensors or .pt/.bin state_dict file.") from None
  if not isinstance(state, Mapping):
    raise UserError(f"{path} holds a {type(state).__name__}, not a state_dict.")
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return {k: _to_numpy(v) for k, v in state.items()}


def save_state_dict(state: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a state_dict of arrays to a .safetensors file (without torch) or, as torch tensors, to
  a .pt/.pth/.bin file (needs PyTorch)."""
  check_state_dict_path(path)
  arrays = {k: np.require(v, requirements=("C", "W")) for k, v in state.items()}
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(arrays, path)
  else:
    torch = _import_torch(path)
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
