"""Test-wide setup: CPU only, 8 fake XLA devices for the sharding tests, a persistent compilation
cache (identical programs compiled in several tests or subprocesses are compiled once).

The flags must be set before JAX initialises its backend, hence at import time of the conftest.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "videococa_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# torchvision (used by the open_clip parity tests) segfaults when it is imported after TensorFlow
# (clashing bundled native libraries); importing it first is safe in every order that follows.
try:
  import torchvision  # noqa: F401
except ImportError:
  pass


import pytest  # noqa: E402

# The shapes_video views the data tests share (built once per session, `shapes_tfds`).
SHAPES_SIZES = {"num_train": 64, "num_validation": 16, "num_test": 16}


@pytest.fixture(scope="session")
def shapes_tfds(tmp_path_factory):
  """The shapes_video video and image views at `SHAPES_SIZES`, prepared once per test session.

  Returns dict(data_dir=str, sizes=SHAPES_SIZES, video=builder, image=builder)."""
  from videococa.data import datasets  # pylint: disable=g-import-not-at-top  (TensorFlow)
  data_dir = str(tmp_path_factory.mktemp("shapes_tfds"))
  views = {view: datasets.ensure_prepared(datasets.get_builder(
      f"shapes_video/{view}", data_dir, config_overrides=SHAPES_SIZES))
      for view in ("video", "image")}
  return dict(data_dir=data_dir, sizes=SHAPES_SIZES, **views)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """Workdir of an uninterrupted in-process run of `ft_helpers`' config (the fault-tolerance and
  multi-process tests compare against its metrics and restore its checkpoints 4, 8, 12)."""
  import ft_helpers  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("reference")
  ft_helpers.run_in_process(workdir)
  return workdir
