"""Test hook for tests/test_fault_tolerance.py, loaded at interpreter start-up when this folder is
on PYTHONPATH (`ft_helpers.launch(..., commit_delay_s=S)`): sleeps S seconds after a checkpoint's
files are written and before orbax commits it (the rename of `<step>.orbax-checkpoint-tmp`), so that
a test can kill the process in the middle of a checkpoint write."""
import logging
import os
import time

DELAY_ENV = "VIDEOCOCA_TEST_CHECKPOINT_COMMIT_DELAY_S"
MESSAGE = "sleeping before committing"


def _install(delay: float) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  cls = atomicity.AtomicRenameTemporaryPath
  finalize = cls.finalize

  def delayed(self, *args, **kwargs):
    logging.warning("%s=%s: %s %s.", DELAY_ENV, delay, MESSAGE, self)
    time.sleep(delay)
    return finalize(self, *args, **kwargs)

  cls.finalize = delayed


if float(os.environ.get(DELAY_ENV) or 0) > 0:
  _install(float(os.environ[DELAY_ENV]))
