"""The whole path from open_clip weights to video numbers, as a user runs it (README "From open_clip
weights"): synthetic mp4s -> ingest; a reduced-size open_clip CoCa with random weights -> convert ->
zero-shot evaluation (retrieval, classification, captioning) -> inflate and fine-tune 5 steps ->
evaluate again. convert, the first evaluation and training are the command-line tools, run as
subprocesses; ingestion and the last evaluation run in this process (to keep the test short)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import synthetic_media

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from videococa import config_utils  # noqa: E402
from videococa.data import ingest  # noqa: E402
from videococa.models import presets  # noqa: E402
from videococa.tools import evaluate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An open_clip CoCa config small enough for a CPU test, with CLIP's full vocabulary (the CLIP BPE
# tokenizer's ids reach 49407).
FLOW_COCA = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16,
                    attentional_pool=True, attn_pooler_heads=4, attn_pooler_queries=8,
                    output_tokens=True),
    text_cfg=dict(context_length=20, vocab_size=49408, width=32, heads=2, layers=2,
                  embed_cls=True, output_tokens=True),
    multimodal_cfg=dict(context_length=20, vocab_size=49408, width=32, heads=2, layers=2))


def _run(*argv, timeout=600):
  result = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result


def _latest(workdir, name):
  with open(os.path.join(workdir, "evals", f"{name}_latest.json")) as f:
    return json.load(f)


def _check_zero_shot(workdir):
  """The three zero-shot results exist, are finite and lie in their ranges."""
  retrieval = _latest(workdir, "msrvtt_retrieval")
  for key in ("t2v_R@1", "v2t_R@1", "t2v_R@5"):
    assert 0.0 <= retrieval[key] <= 1.0, (key, retrieval[key])
  assert retrieval["num_videos"] == 8
  classification = _latest(workdir, "kinetics_classification")
  assert classification["class_names"] == ["moving left", "moving right"]
  assert classification["num_templates"] == 28  # CLIP's Kinetics prompt set.
  assert 0.0 <= classification["top1"] <= 1.0 and classification["num_examples"] == 8
  captioning = _latest(workdir, "msrvtt_captioning")
  for key in ("bleu4", "rouge_l", "cider"):
    assert np.isfinite(captioning[key]) and captioning[key] >= 0.0, (key, captioning[key])
  assert captioning["num_examples"] == 8
  assert all(isinstance(e["prediction"], str) for e in captioning["examples"])


@pytest.mark.slow
def test_open_clip_weights_to_video_numbers(tmp_path):
  # Your videos: 8 clips of a coloured square moving left or right, captions and labels.
  videos, rows = tmp_path / "videos", []
  videos.mkdir()
  for color in ("red", "green", "blue", "yellow"):
    for direction in ("left", "right"):
      name = f"{color}_{direction}.mp4"
      synthetic_media.write_moving_square(videos / name, color, direction)
      for split in ("train", "test"):
        rows.append(f"{name},a {color} square moving {direction},moving {direction},{split}")
  (tmp_path / "annotations.csv").write_text("video,caption,label,split\n" + "\n".join(rows))
  data = tmp_path / "my_videos"  # The ingest command line has its own tests (test_ingest.py).
  ingest.ingest_videos(videos, tmp_path / "annotations.csv", data, "my_videos", num_frames=8)
  assert (data / "class_names.txt").read_text() == "moving left\nmoving right\n"

  # The "downloaded" open_clip checkpoint: a random-weight CoCa saved by open_clip's code.
  model_json = tmp_path / "flow_coca.json"
  model_json.write_text(json.dumps(FLOW_COCA))
  torch.manual_seed(0)
  torch.save(open_clip.CoCa(**FLOW_COCA).state_dict(), tmp_path / "open_clip_model.pt")
  ckpt = tmp_path / "coca_converted"
  _run("videococa.tools.convert", "from_open_clip", f"--model={model_json}",
       f"--checkpoint={tmp_path / 'open_clip_model.pt'}", f"--out={ckpt}")

  zero_shot = f"configs/zeroshot.py:ckpt={ckpt},msrvtt={data},kinetics={data},runlocal"
  _run("videococa.tools.evaluate", f"--config={zero_shot}", f"--workdir={ckpt}")
  _check_zero_shot(ckpt)

  # Fine-tuning picks the CLIP tokenizer and CLIP's pixel statistics from the checkpoint alone.
  recipe = f"configs/videococa.py:finetune,init={ckpt},data={data},runlocal"
  config = config_utils.load_config(recipe)
  assert config.input.tokenizer == "clip_bpe"
  assert tuple(config.model.image_mean) == presets.CLIP_IMAGE_MEAN
  assert tuple(config.model.image_std) == presets.CLIP_IMAGE_STD
  assert config.model.video.variant == "attentional_pooler" and config.input.num_frames == 8
  workdir = tmp_path / "finetuned"
  _run("videococa.train", f"--config={recipe}", "--config.total_steps=5", f"--workdir={workdir}")
  with open(workdir / "metrics.jsonl") as f:
    losses = [m["loss"] for m in map(json.loads, f) if "loss" in m]
  assert losses and all(np.isfinite(losses)), losses

  # In this process (the evaluate command ran above): the fine-tuned VideoCoCa, from its workdir.
  evaluate.evaluate(config_utils.load_config(
      f"configs/zeroshot.py:ckpt={workdir},msrvtt={data},kinetics={data},runlocal"), str(workdir))
  _check_zero_shot(workdir)
