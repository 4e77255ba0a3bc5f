"""Dataset registry: local builders under `data/`, any TFDS-registered name, or prepared folders.

A name ``'<builder>'`` or ``'<builder>/<config>'`` whose folder `data/<builder>/` holds
`<builder>_dataset_builder.py` (e.g. the embedded ``'shapes_video/video'``) is built from that file
(imported by file path; `data/` is not a Python package); any other name goes to `tfds.builder`.
Data lives in `data_dir`: the config
value if given, else $VIDEOCOCA_DATA_DIR, else ~/tensorflow_datasets.

Local builders also take `config_overrides` (e.g. ``{'num_train': 64}`` for smoke tests): they make
a custom config named after the overrides (``video_num_train64``), prepared in its own folder.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import re
import sys
import time
from typing import Any, Mapping

from absl import logging
import tensorflow_datasets as tfds

from videococa.errors import MissingPathError, UserError

DATA_ROOT = pathlib.Path(__file__).resolve().parents[2] / "data"


def local_builders() -> list[str]:
  """Names of the builders under `data/` (folders holding `<name>/<name>_dataset_builder.py`)."""
  if not DATA_ROOT.is_dir():
    return []
  return sorted(d.name for d in DATA_ROOT.iterdir()
                if (d / f"{d.name}_dataset_builder.py").is_file())


def default_data_dir(data_dir: str | None = None) -> str:
  """`data_dir` if given, else $VIDEOCOCA_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(
      data_dir or os.environ.get("VIDEOCOCA_DATA_DIR") or "~/tensorflow_datasets")


def _local_builder_cls(builder: str) -> type[tfds.core.DatasetBuilder]:
  """Imports `data/<builder>/<builder>_dataset_builder.py` once and returns its `Builder`."""
  module_name = f"{builder}_dataset_builder"  # TFDS derives the dataset name from this.
  if module_name not in sys.modules:
    path = DATA_ROOT / builder / f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
  return sys.modules[module_name].Builder


def _custom_config(base, overrides: Mapping[str, Any]):
  """`base` BuilderConfig with `overrides` applied, renamed e.g. 'video_num_test16_num_train64'."""
  fields = ({f.name for f in dataclasses.fields(base)}
            - {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise UserError(f"config_overrides {unknown} are not fields of the {base.name!r} config; "
                    f"use some of {sorted(fields)}.")
  suffix = "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
  return dataclasses.replace(base, name=re.sub(r"[^0-9A-Za-z_]", "_", f"{base.name}_{suffix}"),
                             **overrides)


def get_builder(name: str, data_dir: str | None = None,
                config_overrides: Mapping[str, Any] | None = None) -> tfds.core.DatasetBuilder:
  """Builder for `name` ('<dataset>' or '<dataset>/<config>'; local builders first, then TFDS).

  `config_overrides` (local builders only) replaces BuilderConfig fields, e.g. split sizes.
  """
  builder, _, config = name.partition("/")
  data_dir = default_data_dir(data_dir)
  if builder in local_builders():
    cls = _local_builder_cls(builder)
    configs = {c.name: c for c in cls.BUILDER_CONFIGS}
    config = config or cls.DEFAULT_CONFIG_NAME
    if config not in configs:
      raise UserError(f"Unknown config {config!r} of local dataset {builder!r}; choose one of "
                      f"{sorted(configs)}, e.g. name='{builder}/{sorted(configs)[0]}'.")
    if config_overrides:
      return cls(config=_custom_config(configs[config], config_overrides), data_dir=data_dir)
    return cls(config=config, data_dir=data_dir)
  if config_overrides:
    raise UserError(f"config_overrides only apply to local builders {local_builders()}, not "
                    f"{name!r}; drop them or name a TFDS config as '<dataset>/<config>'.")
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
        f"Unknown dataset name {name!r}: not a local builder under data/ {local_builders()} nor "
        f"a TFDS dataset. Fix the dataset name in "
        f"the config, or for a folder prepared by the ingestion tool use "
        f"get_builder_from_directory(path).") from e


def get_builder_from_directory(path: str) -> tfds.core.DatasetBuilder:
  """Read-only builder for an already prepared folder `<data_dir>/<name>/<config>/<version>`."""
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise MissingPathError(f"Dataset directory {path} does not exist; give the folder written by "
                           "videococa.data.ingest --out (a data.dir= in the config).")
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    raise MissingPathError(f"{path} is not a prepared dataset (no dataset_info.json): point dir= "
                           "at the folder written by videococa.data.ingest --out.")
  return tfds.builder_from_directory(path)


def ensure_prepared(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Generates `builder`'s data into its data_dir unless already there; logs the time it took."""
  if not builder.is_prepared():
    logging.info("Preparing %s in %s ...", builder.info.full_name, builder.data_dir)
    start = time.perf_counter()
    builder.download_and_prepare()
    logging.info("Prepared %s in %.1f s.", builder.info.full_name, time.perf_counter() - start)
  return builder
