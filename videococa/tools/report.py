r"""A static report of a job: training curves, evaluator results beside their chance levels and
baselines, confusion matrices and example captions, as `index.html` + `report.md` + PNGs.

  python -m videococa.tools.report --job_dir=JOB --stage="Image CoCa=image_coca" \
      --stage="VideoCoCa=video_coca"

Reads what training and the evaluators (`videococa.evaluators.run_all`) write into each stage's
workdir:

  * `metrics.jsonl`: one `{"step", "prefix": "train" | "eval/<name>", <scalars>...}` per line;
  * `evals/<name>_latest.json`: the latest result of evaluator `<name>`: its `type`
    ('classification', 'retrieval' or 'captioning'), `step`, metrics (at the top level or under
    `metrics`) and per type `confusion_matrix` + `class_names` + `per_class_accuracy`, or a
    most-common-caption baseline + `examples` (each with a frame strip PNG relative to `evals/`).

Every piece is optional: a missing file, key or value is shown as unavailable and never raises;
unknown extra keys are ignored. Where each thing is read from is in the tables `HEADLINES`,
`BASELINE_KEYS`, `EXAMPLE_IMAGE_KEYS`, `COUNT_KEYS` (evaluators) and `TRAIN_PANELS`,
`TRAIN_SUMMARY` (training), so following a renamed key is a one-line edit. Pure numpy +
matplotlib (Agg); the HTML has no JavaScript and no external resources.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import html
import json
import os
import re
import shutil
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
from absl import app, flags

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after selecting the backend)

DPI = 100
MAX_EXAMPLES = 16  # Example clips shown per captioning evaluator.
MAX_ANNOTATED_CLASSES = 30  # Larger confusion matrices are drawn without per-cell counts.


@dataclasses.dataclass(frozen=True)
class Headline:
  """One metric of an evaluator in the results table (and, if `curve`, in the eval curves).

  `reference` is where its floor lives: ('chance', key) is metric `key` of the result,
  ('baseline', key) metric `key` of its baseline (see `BASELINE_KEYS`); () for none.
  """
  label: str
  key: str
  reference: tuple[str, ...] = ()
  curve: bool = False


HEADLINES = {
    "classification": (
        Headline("top-1 accuracy", "top1", ("chance", "chance"), curve=True),
        Headline("top-5 accuracy", "top5"),
        Headline("mean per-class accuracy", "mean_per_class_accuracy", ("chance", "chance"),
                 curve=True),
    ),
    "retrieval": (
        Headline("text→video R@1", "t2v_R@1", ("chance", "chance_t2v_R@1"), curve=True),
        Headline("text→video R@5", "t2v_R@5"),
        Headline("text→video R@10", "t2v_R@10"),
        Headline("text→video median rank", "t2v_median_rank"),
        Headline("video→text R@1", "v2t_R@1", ("chance", "chance_v2t_R@1"), curve=True),
        Headline("video→text R@5", "v2t_R@5"),
        Headline("video→text R@10", "v2t_R@10"),
        Headline("video→text median rank", "v2t_median_rank"),
    ),
    "captioning": (
        Headline("CIDEr", "cider", ("baseline", "cider"), curve=True),
        Headline("BLEU-4", "bleu4", ("baseline", "bleu4"), curve=True),
        Headline("METEOR", "meteor", ("baseline", "meteor")),
        Headline("ROUGE-L", "rouge_l", ("baseline", "rouge_l")),
    ),
}
COUNT_KEYS = ("num_examples", "num_videos", "num_captions", "num_texts")  # First present is `n`.
# Result key of a baseline (a dict of metrics, optionally `name` and `caption`) -> default name.
BASELINE_KEYS = {"baseline_most_common": "most common caption", "baseline": "baseline"}
EXAMPLE_IMAGE_KEYS = ("frames", "frames_png")  # Key of an example's frame strip PNG path.

# Training curves: one subplot per (title, scalars), drawn when any of its scalars was logged;
# a scalar with '*' stands for every logged scalar it matches (e.g. the extra loss terms').
TRAIN_PANELS = (
    ("loss", ("loss", "contrastive_loss", "caption_loss", "*_loss")),
    ("accuracy", ("contrastive_accuracy", "caption_accuracy", "*_accuracy")),
    ("temperature", ("temperature",)),
    ("learning rate", ("learning_rate",)),
    ("gradient norm", ("grad_norm",)),
    ("throughput (samples/s)", ("samples_per_s",)),
)
# Training summary columns: (label, scalar, reduction over the logged values); a scalar with '*'
# gives a column per logged scalar it matches, its label formatted with the '*' part.
TRAIN_SUMMARY: tuple[tuple[str, str, Callable[[list[float]], float]], ...] = (
    ("final loss", "loss", lambda v: v[-1]),
    ("final contrastive loss", "contrastive_loss", lambda v: v[-1]),
    ("final caption loss", "caption_loss", lambda v: v[-1]),
    ("final contrastive acc.", "contrastive_accuracy", lambda v: v[-1]),
    ("final caption acc.", "caption_accuracy", lambda v: v[-1]),
    ("final {} acc.", "*_accuracy", lambda v: v[-1]),
    ("final temperature", "temperature", lambda v: v[-1]),
    ("median samples/s", "samples_per_s", lambda v: float(np.median(v))),
    ("median step time (s)", "step_time_s", lambda v: float(np.median(v))),
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; } .muted { color: #777; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 1em; }
.example { border: 1px solid #ddd; border-radius: 6px; padding: .6em; margin: 0; }
.example ul { margin: .2em 0; padding-left: 1.2em; } .example p { margin: .3em 0; }
"""
MUTED = ' class="muted"'


# --------------------------------------------------------------------------------------------
# Document model: a report is a list of blocks, rendered once as HTML and once as Markdown.


@dataclasses.dataclass
class Heading:
  level: int
  text: str


@dataclasses.dataclass
class Para:
  text: str
  muted: bool = False


@dataclasses.dataclass
class Image:
  file: str  # Relative to the output directory.
  alt: str


@dataclasses.dataclass
class Table:
  columns: list[str]
  rows: list[list[str]]


@dataclasses.dataclass
class Examples:
  items: list[dict]  # {'id', 'image' (file or None), 'prediction', 'references'}.


# --------------------------------------------------------------------------------------------
# Reading.


def read_records(stage_dir: str) -> list[dict]:
  """The `metrics.jsonl` records of a stage; unparsable lines (e.g. a torn last one) skipped."""
  path = os.path.join(stage_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and "step" in record:
        records.append(record)
  return records


def read_evals(stage_dir: str) -> dict[str, dict]:
  """{evaluator name: latest result} from `evals/<name>_latest.json`; unreadable files skipped."""
  results = {}
  for path in sorted(glob.glob(os.path.join(stage_dir, "evals", "*_latest.json"))):
    try:
      with open(path) as f:
        result = json.load(f)
    except (OSError, json.JSONDecodeError):
      continue
    if isinstance(result, dict):
      result["_dir"] = os.path.dirname(path)
      results[os.path.basename(path)[:-len("_latest.json")]] = result
  return results


def _metrics(result: dict) -> dict:
  """The metrics of an evaluator result (`result['metrics']`, else the result itself)."""
  metrics = result.get("metrics")
  return metrics if isinstance(metrics, dict) else result


def _field(result: dict, key: str) -> Any:
  """A field that may sit at the top level of a result or inside its `metrics`."""
  return result[key] if key in result else _metrics(result).get(key)


def eval_type(result: dict) -> str | None:
  """The evaluator type: `result['type']`, else the type whose first headline metric is present."""
  if result.get("type") in HEADLINES:
    return result["type"]
  metrics = _metrics(result)
  return next((t for t, heads in HEADLINES.items() if heads[0].key in metrics), None)


def headlines(result: dict) -> Sequence[Headline]:
  """The headline metrics of a result; for an unknown type, all its numeric metrics."""
  known = HEADLINES.get(eval_type(result))
  if known:
    return known
  return [Headline(k, k) for k, v in _metrics(result).items()
          if k not in ("step", "seconds") and isinstance(v, (int, float))
          and not isinstance(v, bool)]


def reference(result: dict, headline: Headline) -> tuple[str, Any] | None:
  """(label, value) of the chance level / baseline of `headline`, or None if it has none."""
  if not headline.reference:
    return None
  kind, key = headline.reference
  if kind == "chance":
    return "chance", _metrics(result).get(key)
  name, baseline = _baseline(result)
  return name, _metrics(baseline).get(key) if baseline else None


def _baseline(result: dict) -> tuple[str, dict | None]:
  """(name, metrics dict) of the first baseline in `BASELINE_KEYS` of a result, or ('baseline',
  None)."""
  for key, name in BASELINE_KEYS.items():
    if isinstance(result.get(key), dict):
      return result[key].get("name", name), result[key]
  return "baseline", None


# --------------------------------------------------------------------------------------------
# Formatting.


def fmt(value: Any) -> str:
  """A table cell: floats with 4 decimals (1 from 100, scientific when tiny or huge), None 'n/a'."""
  if value is None:
    return "n/a"
  if isinstance(value, (float, np.floating)):
    value = float(value)
    if not np.isfinite(value):
      return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
      return f"{value:.3e}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
  return str(value)


def _value_cell(metrics: dict, key: str) -> str:
  """A metric's cell; a missing/None value is 'unavailable' with its `<key>_status` reason."""
  value = metrics.get(key)
  if value is not None:
    return fmt(value)
  status = str(metrics.get(f"{key}_status") or "")
  if not status:
    return "unavailable"
  return status if status.startswith("unavailable") else f"unavailable: {status}"


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def _one_line(text: Any) -> str:
  return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Figures.


def _save(fig: Figure, out_dir: str, file: str) -> str:
  fig.savefig(os.path.join(out_dir, file), dpi=DPI, bbox_inches="tight")
  return file


def _grid(num_panels: int, panel_size=(4.0, 2.8)) -> tuple[Figure, list]:
  """A figure with `num_panels` subplots in rows of at most 3."""
  cols = min(3, num_panels)
  rows = -(-num_panels // cols)
  fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax in axes[num_panels:]:
    ax.set_visible(False)
  return fig, list(axes[:num_panels])


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of the records that logged `key` as a number."""
  points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  return [p[0] for p in points], [p[1] for p in points]


def _expand(keys: Sequence[str], records: list[dict]) -> list[tuple[str, str]]:
  """(key, its '*' part) for the logged scalars `keys` name, in order, each once; a pattern with
  '*' matches every logged scalar not named elsewhere in `keys`."""
  logged = sorted({k for r in records for k in r})
  out, seen = [], set()
  for key in keys:
    if "*" in key:
      prefix, suffix = key.split("*", 1)
      matches = [(k, k[len(prefix):len(k) - len(suffix)]) for k in logged
                 if k.startswith(prefix) and k.endswith(suffix) and k not in keys]
    else:
      matches = [(key, key)]
    for k, part in matches:
      if k not in seen and _series(records, k)[0]:
        seen.add(k)
        out.append((k, part))
  return out


def training_curves(records: list[dict], out_dir: str, file: str) -> str | None:
  """Plots `TRAIN_PANELS` over steps; returns the PNG file, or None if nothing was logged."""
  panels = [(title, [k for k, _ in _expand(keys, records)]) for title, keys in TRAIN_PANELS]
  panels = [(title, keys) for title, keys in panels if keys]
  if not panels:
    return None
  fig, axes = _grid(len(panels))
  for ax, (title, keys) in zip(axes, panels):
    for key in keys:
      ax.plot(*_series(records, key), label=key, linewidth=1.2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.grid(alpha=.3)
    if len(keys) > 1:
      ax.legend(fontsize=8)
  return _save(fig, out_dir, file)


def eval_curves(records: list[dict], evals: dict[str, dict], out_dir: str,
                file: str) -> str | None:
  """Plots the `curve` headlines of evaluators logged at >= 2 steps, with their reference lines.

  Returns the PNG file, or None when no evaluator ran periodically.
  """
  panels = []
  names = sorted({r["prefix"][len("eval/"):] for r in records
                  if str(r.get("prefix", "")).startswith("eval/")})
  for name in names:
    logged = [r for r in records if r.get("prefix") == f"eval/{name}"]
    result = evals.get(name) or {"metrics": logged[-1]}
    for head in headlines(result):
      steps, values = _series(logged, head.key)
      if head.curve and len(set(steps)) >= 2:
        panels.append((f"{name}: {head.label}", steps, values, reference(result, head)))
  if not panels:
    return None
  fig, axes = _grid(len(panels))
  for ax, (title, steps, values, ref) in zip(axes, panels):
    ax.plot(steps, values, marker="o", markersize=3, linewidth=1.2, label="model")
    if ref and isinstance(ref[1], (int, float)):
      ax.axhline(ref[1], color="gray", linestyle="--", linewidth=1, label=ref[0])
      ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.grid(alpha=.3)
  return _save(fig, out_dir, file)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str, out_dir: str,
                     file: str) -> str:
  """Heatmap of a [true, predicted] count matrix: colour = fraction of the row, text = count."""
  n = len(confusion)
  support = confusion.sum(axis=1, keepdims=True)
  fraction = confusion / np.maximum(support, 1)
  size = float(np.clip(0.55 * n + 2.5, 4, 11))
  fig = Figure(figsize=(size + 1, size), layout="constrained")
  ax = fig.subplots()
  image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, shrink=.8, label="fraction of the true class")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
  ax.set_yticks(range(n), class_names, fontsize=8)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=10)
  if n <= MAX_ANNOTATED_CLASSES:
    for (i, j), count in np.ndenumerate(confusion):
      ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
              color="white" if fraction[i, j] > .5 else "black")
  return _save(fig, out_dir, file)


# --------------------------------------------------------------------------------------------
# Sections.


def _results_rows(stage: str, name: str, result: dict) -> list[list[str]]:
  """Rows of the results table for one evaluator result."""
  metrics = _metrics(result)
  count = next((metrics[k] for k in COUNT_KEYS if metrics.get(k) is not None), None)
  rows = []
  for head in headlines(result):
    if head.key not in metrics and f"{head.key}_status" not in metrics:
      continue
    ref = reference(result, head)
    if ref is None:
      ref_cell = "—"
    elif ref[1] is None:
      ref_cell = f"unavailable ({ref[0]})"
    else:
      ref_cell = f"{fmt(ref[1])} ({ref[0]})"
    rows.append([stage, name, head.label, _value_cell(metrics, head.key), ref_cell,
                 fmt(result.get("step")), fmt(count)])
  return rows


def results_section(stage_evals: dict[str, dict[str, dict]]) -> list:
  """The headline metrics of every evaluator of every stage, beside their chance / baseline."""
  rows = [row for stage, evals in stage_evals.items()
          for name, result in evals.items() for row in _results_rows(stage, name, result)]
  blocks = [Heading(2, "Evaluation results")]
  if not rows:
    return blocks + [Para("No evaluator results found (unavailable).", muted=True)]
  return blocks + [Table(["stage", "evaluator", "metric", "value", "chance / baseline", "step",
                          "n"], rows)]


def training_summary_section(stage_records: dict[str, list[dict]]) -> list:
  """One row per stage: last step and `TRAIN_SUMMARY` of its train scalars."""
  trains = {stage: [r for r in records if r.get("prefix", "train") == "train"]
            for stage, records in stage_records.items()}
  every = [r for train in trains.values() for r in train]
  columns = []  # (label, key, reduce), the '*' columns expanded over every stage's scalars.
  for label, key, reduce in TRAIN_SUMMARY:
    if "*" in key:
      fixed = [k for _, k, _ in TRAIN_SUMMARY if "*" not in k]
      columns += [(label.format(part.replace("_", "-")), k, reduce)
                  for k, part in _expand([key], every) if k not in fixed]
    else:
      columns.append((label, key, reduce))
  rows = []
  for stage, train in trains.items():
    cells = [stage, fmt(max((r["step"] for r in train), default=None))]
    for _, key, reduce in columns:
      values = _series(train, key)[1]
      cells.append(fmt(reduce(values)) if values else "n/a")
    rows.append(cells)
  return [Heading(2, "Training summary"),
          Table(["stage", "last step"] + [label for label, _, _ in columns], rows)]


def extra_tables_section(extra_tables: dict[str, list[dict]]) -> list:
  """Each {title: rows of dicts} as a table whose columns are the keys in first-seen order."""
  blocks = []
  for title, rows in extra_tables.items():
    columns = list(dict.fromkeys(k for row in rows for k in row))
    blocks += [Heading(2, title),
               Table(columns, [[fmt(row.get(c)) for c in columns] for row in rows])
               if rows else Para("(empty)", muted=True)]
  return blocks


def _confusion(result: dict) -> np.ndarray | None:
  """The [true, predicted] count matrix of a classification result, or None if absent/invalid."""
  try:
    confusion = np.asarray(_field(result, "confusion_matrix"), dtype=np.int64)
  except (TypeError, ValueError):
    return None
  return confusion if confusion.ndim == 2 and confusion.shape[0] == confusion.shape[1] else None


def _classification_blocks(name: str, result: dict, prefix: str, out_dir: str) -> list:
  """Confusion heatmap and per-class accuracy table of a classification result."""
  blocks = [Heading(3, f"{name}: confusion matrix")]
  per_class = _field(result, "per_class_accuracy") or {}
  class_names = _field(result, "class_names") or list(per_class)
  confusion = _confusion(result)
  support = {}
  if confusion is None:
    blocks.append(Para("Confusion matrix unavailable.", muted=True))
  else:
    if len(class_names) != len(confusion):
      class_names = [str(i) for i in range(len(confusion))]
    support = dict(zip(class_names, confusion.sum(axis=1).tolist()))
    file = confusion_figure(confusion, class_names, f"{name} (rows: true, columns: predicted)",
                            out_dir, f"{prefix}_{_slug(name)}_confusion.png")
    blocks.append(Image(file, f"{name} confusion matrix"))
  if per_class:
    blocks.append(Table(["class", "accuracy", "examples"],
                        [[str(c), fmt(a), fmt(support.get(c))] for c, a in per_class.items()]))
  return blocks


def _resolve(path: str, result: dict, stage_dir: str) -> str | None:
  """An existing file for `path`: absolute, or relative to the result's folder or the stage."""
  for base in (result.get("_dir", stage_dir), stage_dir, ""):
    candidate = os.path.join(base, path)
    if os.path.isfile(candidate):
      return candidate
  return None


def _captioning_blocks(name: str, result: dict, prefix: str, stage_dir: str,
                       out_dir: str) -> list:
  """The example clips (frame strip, generated caption, references) of a captioning result."""
  blocks = [Heading(3, f"{name}: example test clips")]
  baseline_name, baseline = _baseline(result)
  if baseline and baseline.get("caption"):
    blocks.append(Para(f"Baseline ({baseline_name}): “{_one_line(baseline['caption'])}”"))
  decode = _field(result, "decode")
  if isinstance(decode, dict):
    blocks.append(Para("Decoding: " + ", ".join(f"{k}={v}" for k, v in decode.items()), muted=True))
  items = []
  for i, example in enumerate((_field(result, "examples") or [])[:MAX_EXAMPLES]):
    png = next((example[k] for k in EXAMPLE_IMAGE_KEYS if isinstance(example.get(k), str)), None)
    source = png and _resolve(png, result, stage_dir)
    image = None
    if source:
      image = f"{prefix}_{_slug(name)}_example{i}.png"
      shutil.copyfile(source, os.path.join(out_dir, image))
    references = example.get("references") or []
    items.append(dict(id=example.get("id", i), image=image, prediction=example.get("prediction"),
                      references=[references] if isinstance(references, str) else references))
  blocks.append(Examples(items) if items else Para("No examples available.", muted=True))
  return blocks


def stage_section(index: int, stage: str, stage_dir: str, records: list[dict],
                  evals: dict[str, dict], out_dir: str) -> list:
  """Training curves, eval curves, confusion matrices and examples of one stage."""
  prefix = f"stage{index}_{_slug(stage)}"
  blocks = [Heading(2, stage), Para(f"Workdir: {stage_dir}", muted=True)]
  train = [r for r in records if r.get("prefix", "train") == "train"]
  file = training_curves(train, out_dir, f"{prefix}_training.png")
  blocks.append(Image(file, f"{stage} training curves") if file else
                Para("No training metrics found (unavailable).", muted=True))
  file = eval_curves(records, evals, out_dir, f"{prefix}_eval_curves.png")
  if file:
    blocks += [Heading(3, "Evaluation during training"), Image(file, f"{stage} eval curves")]
  if not evals:
    blocks.append(Para("No evaluator results found (unavailable).", muted=True))
  for name, result in evals.items():
    kind = eval_type(result)
    if kind == "classification":
      blocks += _classification_blocks(name, result, prefix, out_dir)
    elif kind == "captioning":
      blocks += _captioning_blocks(name, result, prefix, stage_dir, out_dir)
  return blocks


# --------------------------------------------------------------------------------------------
# Rendering.


def _html_block(block) -> str:
  e = html.escape
  if isinstance(block, Heading):
    return f"<h{block.level}>{e(block.text)}</h{block.level}>"
  if isinstance(block, Para):
    return f"<p{MUTED if block.muted else ''}>{e(block.text)}</p>"
  if isinstance(block, Image):
    return f'<p><img src="{e(block.file)}" alt="{e(block.alt)}"></p>'
  if isinstance(block, Table):
    head = "".join(f"<th>{e(c)}</th>" for c in block.columns)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                   for row in block.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
  cards = []
  for item in block.items:
    image = (f'<img src="{e(item["image"])}" alt="frames of {e(str(item["id"]))}">'
             if item["image"] else '<p class="muted">(frames unavailable)</p>')
    refs = "".join(f"<li>{e(_one_line(r))}</li>" for r in item["references"])
    cards.append(f'<figure class="example">{image}<figcaption>'
                 f'<p class="muted">{e(str(item["id"]))}</p>'
                 f'<p><b>Generated:</b> {e(_one_line(item["prediction"] or "(none)"))}</p>'
                 f'<p><b>References:</b></p><ul>{refs}</ul></figcaption></figure>')
  return f'<div class="examples">{"".join(cards)}</div>'


def render_html(title: str, blocks: list) -> str:
  body = "\n".join(_html_block(b) for b in blocks)
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
          f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _md_text(text: Any) -> str:
  return html.escape(_one_line(text), quote=False)


def _md_block(block) -> str:
  if isinstance(block, Heading):
    return f"{'#' * block.level} {_md_text(block.text)}"
  if isinstance(block, Para):
    return f"*{_md_text(block.text)}*" if block.muted else _md_text(block.text)
  if isinstance(block, Image):
    return f"![{_md_text(block.alt)}]({block.file})"
  if isinstance(block, Table):
    cell = lambda c: _md_text(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(c) for c in block.columns) + " |",
             "|" + "---|" * len(block.columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in block.rows]
    return "\n".join(lines)
  parts = []
  for item in block.items:
    lines = [f"**{_md_text(item['id'])}**", ""]
    lines.append(f"![frames of {_md_text(item['id'])}]({item['image']})" if item["image"]
                 else "*(frames unavailable)*")
    lines += ["", f"Generated: {_md_text(item['prediction'] or '(none)')}", "", "References:"]
    lines += [f"- {_md_text(r)}" for r in item["references"]]
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def render_markdown(title: str, blocks: list) -> str:
  return "\n\n".join([f"# {_md_text(title)}"] + [_md_block(b) for b in blocks]) + "\n"


# --------------------------------------------------------------------------------------------
# Entry points.


def _stage_dir(job_dir: str, path: str) -> str:
  """A stage workdir: `path` if it is a directory, else `path` relative to the job dir."""
  return path if os.path.isdir(path) else os.path.join(job_dir, path)


def write_report(job_dir: str, stages: dict[str, str], out_dir: str | None = None,
                 title: str = "videococa report",
                 extra_tables: dict[str, list[dict]] | None = None) -> str:
  """Writes `index.html`, `report.md` and their PNGs; returns the path of `index.html`.

  Args:
    job_dir: the job directory (relative stage paths are resolved against it).
    stages: {display name: stage workdir}, in report order.
    out_dir: where to write; default `{job_dir}/report`.
    title: the report's title.
    extra_tables: {title: rows (dicts; columns are the keys)} shown after the results table.
  """
  out_dir = out_dir or os.path.join(job_dir, "report")
  os.makedirs(out_dir, exist_ok=True)
  dirs = {stage: _stage_dir(job_dir, path) for stage, path in stages.items()}
  records = {stage: read_records(d) for stage, d in dirs.items()}
  evals = {stage: read_evals(d) for stage, d in dirs.items()}
  now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  blocks = [Para(f"Job: {os.path.abspath(job_dir)} — generated {now}.", muted=True)]
  blocks += results_section(evals)
  blocks += extra_tables_section(extra_tables or {})
  blocks += training_summary_section(records)
  for index, (stage, stage_dir) in enumerate(dirs.items()):
    blocks += stage_section(index, stage, stage_dir, records[stage], evals[stage], out_dir)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(render_markdown(title, blocks))
  path = os.path.join(out_dir, "index.html")
  with open(path, "w") as f:
    f.write(render_html(title, blocks))
  return path


def parse_stages(specs: Sequence[str]) -> dict[str, str]:
  """['NAME=PATH', ...] -> {NAME: PATH} (the path is what follows the last '=')."""
  stages = {}
  for spec in specs:
    name, sep, path = spec.rpartition("=")
    if not sep or not name or not path:
      raise ValueError(f"--stage must be NAME=PATH, got {spec!r}.")
    stages[name] = path
  return stages


def discover_stages(job_dir: str) -> dict[str, str]:
  """{subdirectory name: path} of the job's subdirectories with a `metrics.jsonl` or `evals/`."""
  return {name: os.path.join(job_dir, name) for name in sorted(os.listdir(job_dir))
          if os.path.exists(os.path.join(job_dir, name, "metrics.jsonl"))
          or os.path.isdir(os.path.join(job_dir, name, "evals"))}


def define_flags() -> None:
  """The CLI flags (defined by the entry point only, so importing this module defines none)."""
  flags.DEFINE_string("job_dir", None, "The job directory.", required=True)
  flags.DEFINE_multi_string("stage", [], "NAME=PATH of a stage workdir (PATH as given or relative "
                            "to --job_dir); default: every subdirectory with metrics or evals.")
  flags.DEFINE_string("out_dir", None, "Output directory (default JOB/report).")
  flags.DEFINE_string("title", "videococa report", "The report's title.")


def main(argv):
  del argv
  f = flags.FLAGS
  stages = parse_stages(f.stage) if f.stage else discover_stages(f.job_dir)
  print(write_report(f.job_dir, stages, out_dir=f.out_dir, title=f.title))


if __name__ == "__main__":
  define_flags()
  app.run(main)
