"""Zero-shot evaluation of a checkpoint on benchmarks ingested with `videococa.data.ingest`.

  python -m videococa.tools.evaluate --workdir=CKPT \
      --config=configs/zeroshot.py:ckpt=CKPT[,msrvtt=DIR][,kinetics=DIR][,vatex=DIR]
                                   [,imagenet=DIR][,coco=DIR][,split=test][,frames=8][,runlocal]

CKPT     the checkpoint: a `videococa.tools.convert from_open_clip` output or a training workdir.
         Its model config, pixel normalisation and tokenizer come from its meta. An image model is
         evaluated on video as the paper's zero-shot VideoCoCa: the attentional-pooler variant
         (all frames' tokens through the image model's poolers, no new parameter).
Each benchmark argument adds its evaluators, reading split `split` of the dataset folder DIR:
  msrvtt    text<->video retrieval (`msrvtt_retrieval`) and captioning (`msrvtt_captioning`). The
            1k-A convention: ingest the 1,000 test videos of the JSFusion split with their one
            caption each (its MSRVTT_JSFUSION_test.csv has `video_id` and `sentence` columns,
            both understood by ingest) as split 'test'.
  kinetics  zero-shot classification (`kinetics_classification`) over the class names ingest wrote
            to DIR/class_names.txt (Kinetics / UCF / HMDB annotations with a `label` column),
            with CLIP's 28 Kinetics prompt templates, label `label_id`.
  vatex     captioning (`vatex_captioning`; VATEX's JSON with English captions `enCap`).
  imagenet  image zero-shot classification (`imagenet_classification`): class folders ingested
            with `ingest image --images=VAL_DIR` (no annotations); 1,000 classes get CLIP's
            readable ImageNet names, others DIR/class_names.txt; CLIP's 80 ImageNet templates.
  coco      image captioning and retrieval (`coco_captioning`, `coco_retrieval`; COCO captions
            JSON ingested with `ingest image`).
Frames: `frames` uniformly sampled per clip; pixels resized as open_clip does (short side to the
model's image size with antialiased bicubic, centre crop). Captions: beam search (4 beams) as in
CoCa, greedy with runlocal. `runlocal`: greedy decoding and batches of 8.
"""
import ml_collections

from videococa import config_utils
from videococa.evaluators import prompts

BENCHMARKS = ("msrvtt", "kinetics", "vatex", "imagenet", "coco")


def get_config(arg=None):
  arg = config_utils.parse_arg(arg, ckpt="", split="test", frames=8, runlocal=False,
                               **{name: "" for name in BENCHMARKS})
  if not arg.ckpt:
    raise ValueError("configs/zeroshot.py needs ckpt=CHECKPOINT (a convert output or workdir).")
  if not any(arg[name] for name in BENCHMARKS):
    raise ValueError(f"configs/zeroshot.py: give at least one benchmark folder, NAME=DIR with NAME "
                     f"in {BENCHMARKS}.")
  config = ml_collections.ConfigDict(dict(seed=0, model_name="coca", extensions=(),
                                          mesh=dict(data=-1, fsdp=1, tensor=1)))
  config.model = ml_collections.ConfigDict()
  config.input = ml_collections.ConfigDict(dict(num_frames=arg.frames, tokenizer=None))
  config_utils.init_from_checkpoint(config, arg.ckpt)
  if not config.model:
    raise ValueError(f"configs/zeroshot.py: the checkpoint {arg.ckpt} records no model config "
                     "(written before checkpoints carried one); evaluate it with its training "
                     "config instead.")
  if not config.model.get("video"):
    config.model.video = dict(variant="attentional_pooler", num_frames=arg.frames)
  size = config.model.vision.image_size
  resize = f'resize({size}, method="bicubic", antialias=True)'
  video_pp = f"sample_frames({arg.frames})|decode_video|{resize}"
  image_pp = f"decode_image|{resize}"
  batch = 8 if arg.runlocal else 64
  decode = dict(method="greedy") if arg.runlocal else dict(method="beam", beam_size=4)
  data = lambda folder: dict(dir=folder, split=arg.split)  # noqa: E731

  def captioning(folder, pp):
    return dict(type="captioning", batch_size=batch, data=data(folder), decode=decode,
                pp=f'{pp}|keep("frames", "captions", "id")')

  def retrieval(folder, pp):
    return dict(type="retrieval", batch_size=batch, data=data(folder),
                pp=f'{pp}|keep("frames", "captions")')

  def classification(folder, pp, class_names, templates):
    return dict(type="classification", batch_size=batch, data=data(folder),
                pp=f'{pp}|keep("frames", "label_id")', label_key="label_id",
                class_names=class_names, templates=list(templates))

  evals = {}
  if arg.msrvtt:
    evals["msrvtt_retrieval"] = retrieval(arg.msrvtt, video_pp)
    evals["msrvtt_captioning"] = captioning(arg.msrvtt, video_pp)
  if arg.kinetics:
    evals["kinetics_classification"] = classification(
        arg.kinetics, video_pp, f"{arg.kinetics}/class_names.txt",
        prompts.CLIP_KINETICS_TEMPLATES)
  if arg.vatex:
    evals["vatex_captioning"] = captioning(arg.vatex, video_pp)
  if arg.imagenet:
    names = f"{arg.imagenet}/class_names.txt"
    with open(names, encoding="utf-8") as f:
      if sum(1 for line in f if line.strip()) == 1000:
        names = prompts.IMAGENET_CLASS_NAMES_FILE
    evals["imagenet_classification"] = classification(arg.imagenet, image_pp, names,
                                                      prompts.CLIP_IMAGENET_TEMPLATES)
  if arg.coco:
    evals["coco_captioning"] = captioning(arg.coco, image_pp)
    evals["coco_retrieval"] = retrieval(arg.coco, image_pp)
  config.evals = evals
  return config
