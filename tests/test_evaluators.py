"""Tests of the zero-shot evaluators: `videococa.tools.evaluate` end to end on a tiny checkpoint,
prompt-template averaging, multi-caption retrieval, and the same metrics on 8 devices as on 1."""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from videococa import config_utils, errors, evaluators  # noqa: E402
from videococa.data import pipeline, tokenizer  # noqa: E402
from videococa.evaluators import metrics  # noqa: E402
from videococa.models import coca  # noqa: E402
from videococa.projects.shapes import scenes as shapes  # noqa: E402
from videococa.tools import evaluate  # noqa: E402
from videococa.train import checkpoint, metric_writer, sharding  # noqa: E402

T, S = 4, 64  # Frames per clip, image size.
PP = f'sample_frames({T})|decode_video|resize({S})|keep("frames", "captions", "label", "id")'
CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "coca.py")


@pytest.fixture(scope="module")
def env(shapes_tfds, tmp_path_factory):
  """The session's small shapes_video, a tokenizer on its captions, a random coca_tiny saved as a
  checkpoint and a config with all three evaluators on the first 10 test clips in batches of 4
  (the last one partial)."""
  root = tmp_path_factory.mktemp("evaluators")
  data = dict(name="shapes_video/video", split="test[:10]", data_dir=shapes_tfds["data_dir"],
              config_overrides=shapes_tfds["sizes"])
  builder = shapes_tfds["video"]
  tok_path = tokenizer.train(tokenizer.captions_from_builder(builder, "train"), 128, root / "spm")
  tok = tokenizer.Tokenizer(tok_path)
  config = config_utils.load_config(f"{CONFIG}:tiny")
  config.model.update(vocab_size=128, max_len=24)
  config.model.vision.update(image_size=S, patch_size=16)
  assert tok.vocab_size <= config.model.vocab_size
  config.input.update(num_frames=T, tokenizer=tok_path)
  config.mesh = dict(data=2, fsdp=1, tensor=1)
  common = dict(batch_size=4, data=data, pp=PP)
  config.evals = dict(
      motion=dict(type="classification", every=100, class_names=list(shapes.MOTION_CLASS_NAMES),
                  templates=list(shapes.MOTION_PROMPT_TEMPLATES), **common),
      retrieval=dict(type="retrieval", **common),
      captions=dict(type="captioning", decode=dict(method="greedy", max_new_tokens=8),
                    show_examples=3, baseline_captions_from=dict(data, split="train"), **common))
  model = coca.Model(**config.model)
  frames = jnp.zeros((1, T, S, S, 3), jnp.float32)
  init = jax.jit(lambda rng: model.init(rng, frames, jnp.zeros((1, 24), jnp.int32))["params"])
  params = nn.unbox(init(jax.random.key(0)))  # Jitted: one compilation, not one per op.
  workdir = root / "workdir"
  checkpoint.save_params(str(workdir / "checkpoints"), params, {"model": "coca_tiny"})
  return dict(config=config, model=model, params=params, workdir=workdir, data=data, tok=tok,
              tmp=root)


def _mesh(size):
  return sharding.make_mesh(dict(data=size), jax.devices()[:size])


def test_evaluate_end_to_end(env, monkeypatch):
  which = shutil.which  # No Java (fast; METEOR must then be reported unavailable, not 0):
  monkeypatch.setattr(shutil, "which", lambda cmd, *a: None if cmd == "java" else which(cmd, *a))
  results = evaluate.evaluate(env["config"], str(env["workdir"]))
  out = env["workdir"] / "evals"
  saved = {}
  for name in ("motion", "retrieval", "captions"):
    saved[name] = json.loads((out / f"{name}_step0.json").read_text())
    assert json.loads((out / f"{name}_latest.json").read_text()) == saved[name]
    assert saved[name]["num_examples"] == 10  # Every clip once: the padding rows are dropped.
    assert saved[name]["step"] == 0 and saved[name]["name"] == name
    assert set(saved[name]) == set(results[name])

  motion = saved["motion"]
  assert motion["type"] == "classification" and motion["num_templates"] == 5
  assert 0 <= motion["top1"] <= motion["top5"] <= 1
  assert motion["chance"] == pytest.approx(1 / 7)
  assert list(motion["per_class_accuracy"]) == list(shapes.MOTION_CLASS_NAMES)
  confusion = np.asarray(motion["confusion_matrix"])
  assert confusion.shape == (7, 7) and confusion.sum() == 10
  assert np.trace(confusion) / 10 == pytest.approx(motion["top1"])

  ret = saved["retrieval"]
  assert ret["num_videos"] == 10 and ret["num_texts"] == 50  # 5 captions per clip.
  for d in ("t2v", "v2t"):
    assert 0 <= ret[f"{d}_R@1"] <= ret[f"{d}_R@5"] <= ret[f"{d}_R@10"] <= 1
    assert 1 <= ret[f"{d}_median_rank"] <= ret["num_texts"]
  assert ret["chance_t2v_R@1"] == pytest.approx(0.1)

  cap = saved["captions"]
  for scores in (cap, cap["baseline_most_common"]):
    assert scores["meteor"] is None and scores["meteor_status"] == metrics.METEOR_NO_JAVA  # Not 0.
    assert 0 <= scores["bleu4"] <= 1 and 0 <= scores["rouge_l"] <= 1 and scores["cider"] >= 0
    assert scores["num_captions"] == 10
  assert isinstance(cap["baseline_most_common"]["caption"], str)
  clips = next(pipeline.make_eval_iterator(env["data"], PP, 16))
  assert [e["id"] for e in cap["examples"]] == clips["id"][:3]  # The first clips, in order.
  for example, references in zip(cap["examples"], clips["captions"]):
    assert isinstance(example["prediction"], str) and example["references"] == references
    with Image.open(out / example["frames"]) as strip:
      assert strip.size == (T * S, S)

  logged = metric_writer.read_jsonl(str(env["workdir"] / "metrics.jsonl"), "eval/motion")
  assert logged[-1]["step"] == 0 and logged[-1]["top1"] == motion["top1"]
  assert {k for k in logged[-1] if k.startswith("per_class_accuracy/")} == {
      f"per_class_accuracy/{c}" for c, a in motion["per_class_accuracy"].items() if a is not None}
  logged = metric_writer.read_jsonl(str(env["workdir"] / "metrics.jsonl"), "eval/captions")
  assert "cider" in logged[-1] and "meteor" not in logged[-1]  # None is not logged as a number.


def test_classifier_averages_prompt_templates(env):
  model, params, tok = env["model"], env["params"], env["tok"]
  names, templates = ["red circle", "blue square"], ["a {}", "a video of a {} moving", "{}!"]
  evaluator = evaluators.build(
      "cls", dict(type="classification", batch_size=2, data=env["data"], pp=PP, class_names=names,
                  templates=templates), model=model, mesh=_mesh(1), tokenizer=tok)

  encode_text = jax.jit(lambda t: model.apply({"params": params}, t, method="encode_text")[0])

  def embed(text):  # One prompt, tokenized as in training: [BOS, ..., EOS, PAD...][:max_len].
    return np.asarray(encode_text(tok.encode([text], model.max_len + 1)[:, :-1])[0])

  mean = np.stack([np.mean([embed(t.format(c)) for t in templates], axis=0) for c in names])
  expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
  got = evaluator.classifier(params)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  first_template = np.stack([embed(templates[0].format(c)) for c in names])
  assert not np.allclose(got, first_template, atol=1e-3)  # The average, not one template.
  # Class names may come from a file (one per line, as ingest's class_names.txt).
  names_file = env["tmp"] / "class_names.txt"
  names_file.write_text("red circle\n\nblue square\n")
  from_file = evaluators.build(
      "cls", dict(type="classification", batch_size=2, data=env["data"], pp=PP,
                  class_names=str(names_file), templates=templates),
      model=model, mesh=_mesh(1), tokenizer=tok)
  assert from_file.class_names == names
  with pytest.raises(errors.MissingPathError, match=r"cls.class_names='/no/such.txt': cannot"):
    evaluators.build("cls", dict(type="classification", batch_size=2, data=env["data"], pp=PP,
                                 class_names="/no/such.txt", templates=templates),
                     model=model, mesh=_mesh(1), tokenizer=tok)


def test_retrieval_multi_caption_and_8_devices_match_1(env):
  model, params = env["model"], env["params"]
  config = dict(type="retrieval", batch_size=8, data=env["data"], pp=PP)  # 10 clips: 8 + 2.
  runs = {}
  for size in (8, 1):
    evaluator = evaluators.build("ret", config, model=model, mesh=_mesh(size), tokenizer=env["tok"])
    runs[size] = evaluator.similarity(params), evaluator.run(params)

  # Manual: every clip and caption encoded on one device, all captions of a clip kept.
  batch = next(pipeline.make_eval_iterator(env["data"], PP, 16))
  real = batch["mask"]
  frames = batch["frames"][real].astype(np.float32) / 127.5 - 1
  video = jax.jit(lambda f: model.apply({"params": params}, f, method="encode_visual")[0])(frames)
  captions = [c for c, m in zip(batch["captions"], real) if m]
  texts = [c for caps in captions for c in caps]
  tokens = env["tok"].encode(texts, model.max_len + 1)[:, :-1]
  text = jax.jit(lambda t: model.apply({"params": params}, t, method="encode_text")[0])(tokens)
  similarity = np.asarray(text @ video.T)
  text_to_video = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
  assert len(texts) == 50 and len(captions) == 10
  expected = metrics.retrieval_metrics(similarity, text_to_video)

  for size, ((sim, t2v), result) in runs.items():
    np.testing.assert_allclose(sim, similarity, atol=1e-5, err_msg=f"data={size}")
    np.testing.assert_array_equal(t2v, text_to_video)
    assert {k: result[k] for k in expected} == pytest.approx(expected), f"data={size}"
  assert runs[8][1] == runs[1][1]


def test_due_and_config_errors(env):
  model, tok, mesh = env["model"], env["tok"], _mesh(2)
  built = evaluators.build_all(env["config"], model=model, mesh=mesh, tokenizer=tok)
  assert [e.name for e in evaluators.due(built, 100, 1000)] == ["motion"]
  assert [e.name for e in evaluators.due(built, 150, 1000)] == []
  assert len(evaluators.due(built, 1000, 1000)) == 3
  base = dict(type="retrieval", batch_size=4, data=env["data"], pp=PP)
  cases = [
      (dict(base, type="detection"), r"config.evals.x.type='detection'"),
      (dict(base, batch_size=3),
       r"config.evals.x.batch_size=3 is not a positive multiple of the data-parallel size 2"),
      (dict(base, templates=["{}"]), r"config.evals.x has unknown fields \['templates'\]"),
      (dict(base, pp=PP.replace('keep(', 'choose_caption|tokenize(25)|keep("text", ')),
       r"config.evals.x.pp=.* tokenizes"),
      (dict(base, type="classification", class_names=["a"], templates=["a video"]),
       r"config.evals.x.templates: every template needs exactly one"),
      (dict(base, type="captioning", decode=dict(max_new_tokens=99)),
       r"config.evals.x.decode.max_new_tokens=99 must be in \[1, config.model.max_len=24\]"),
  ]
  for cfg, message in cases:
    with pytest.raises(ValueError, match=message):
      evaluators.build("x", cfg, model=model, mesh=mesh, tokenizer=tok)
