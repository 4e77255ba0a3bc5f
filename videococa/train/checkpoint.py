"""Checkpointing of the training state over orbax-checkpoint's `CheckpointManager`.

A checkpoint is `<directory>/<step>/` holding `state/` (the pytree of arrays, tensorstore/OCDBT),
`meta/metadata` (a small JSON dict: data-pipeline position, config hash, ...), orbax's
`_CHECKPOINT_METADATA` and `commit_success.txt`.

Guarantees (orbax-checkpoint 0.12.x):

* Atomic. On local/POSIX filesystems orbax writes everything into `<step>.orbax-checkpoint-tmp/`,
  writes `commit_success.txt` into it and only then renames it to `<step>/`. A write killed at any
  point leaves just the `.orbax-checkpoint-tmp` directory: it is never listed as a step (so never
  returned by `latest_step()` or restored by `restore(None, ...)`), the next `Checkpointer` on
  the directory deletes it in the background, and saving that step again replaces it. On stores
  without atomic rename (gs://) orbax writes into `<step>/` directly and a step counts only once
  its `commit_success.txt` exists. Old checkpoints (beyond `max_to_keep`) are deleted only after
  the new one is committed.
* Asynchronous by default. `save()` returns once the arrays are copied off the devices; the write
  runs in a background thread. The next `save()`, `restore()`, `wait_until_finished()` and
  `close()` wait for it. Call `close()` (or use `with Checkpointer(...)`) before the process exits.
  `latest_step()`/`all_steps()` include a step this process is still writing.
* Multi-host. Every process must make the same calls (they contain barriers). Orbax writes each
  array shard from the process that owns it and the JSON meta from the primary host only; this
  module writes no files itself.
* Resharding restore. `restore()` reads straight into the shardings of `abstract_state`
  (`jax.ShapeDtypeStruct`s with `.sharding`), whatever mesh the checkpoint was written from.
  Arrays are cast to the target dtype. Before reading, the tree structure and shapes are checked
  against the checkpoint's metadata and a mismatch raises a `UserError` (a ValueError) naming the
  parameter. A missing checkpoint raises `MissingPathError` (a FileNotFoundError).
* Typed PRNG keys (`jax.random.key(...)`) are stored by orbax as their raw key data plus the key
  implementation name and come back as typed keys; callers pass them like any other array.
"""
import json
import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from videococa.errors import MissingPathError, UserError
from videococa.train import sharding

PyTree = Any
def _stored_shape(x: jax.ShapeDtypeStruct) -> tuple[int, ...]:
  """Shape as stored on disk: typed PRNG keys are stored as their key data."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, x).shape)
  return tuple(x.shape)


class Checkpointer:
  """Saves and restores `(state, meta)` every `save_interval_steps`, keeping `max_to_keep`."""

  def __init__(self, directory: str, *, save_interval_steps: int, max_to_keep: int,
               async_save: bool = True):
    """Opens (creating it if missing) the checkpoint root `directory` (local path or gs://).

    Args:
      directory: root directory; each checkpoint is the sub-directory `<step>/`.
      save_interval_steps: `save()` without `force` saves the steps that are multiples of this.
      max_to_keep: the newest this many checkpoints are kept, older ones deleted.
      async_save: write in a background thread (see the module docstring).
    """
    if save_interval_steps < 1 or max_to_keep < 1:
      raise ValueError(f"save_interval_steps={save_interval_steps} and max_to_keep={max_to_keep} "
                       "must both be >= 1.")
    policy = checkpoint_managers.AnySavePolicy([
        checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
        # Saves at the step agreed on by all hosts when the JAX preemption notifier fires.
        checkpoint_managers.PreemptionCheckpointingPolicy(),
    ])
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_decision_policy=policy, create=True,
        cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

  @property
  def directory(self):
    """The root directory (an `epath.Path`) holding one sub-directory per step."""
    return self._manager.directory

  def all_steps(self) -> list[int]:
    """Steps of the committed checkpoints (plus one this process is writing), ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Newest step from `all_steps()`, None if there is no checkpoint."""
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: dict, *, force: bool = False) -> bool:
    """Starts saving `state` and `meta` as `step`; returns whether a save was started.

    Without `force`, saves only when `step` is a multiple of `save_interval_steps` (or a
    preemption was signalled) and newer than the latest checkpoint. `force=True` (end of training,
    SIGTERM) saves regardless, unless `step` is already saved. Must be called on all processes.
    """
    try:
      json.dumps(meta)
    except TypeError as e:
      raise TypeError(f"checkpoint meta must be JSON-serialisable (use lists of python ints/floats/"
                      f"strings): {e}") from e
    if step in self._manager.all_steps():
      logging.info("Checkpoint for step %d already exists in %s; not saving it again.", step,
                   self.directory)
      return False
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def _step_or_raise(self, step: int | None) -> int:
    """Returns `step` (the latest one if None) after checking that it exists."""
    self.wait_until_finished()
    steps = self.all_steps()
    if step is None and steps:
      return steps[-1]
    if step not in steps:
      raise MissingPathError(
          f"no checkpoint {'' if step is None else f'for step {step} '}in {self.directory} "
          f"(available steps: {steps}); check the directory and step.")
    return step

  def check_compatible(self, step: int, abstract_state: PyTree) -> None:
    """Raises UserError unless checkpoint `step` has exactly the paths and shapes of `abstract_state`.

    The error names the first mismatching path (in `abstract_state` order, then extra ones found
    only in the checkpoint) with both shapes. Every leaf of `abstract_state` must have a sharding.
    """
    step = self._step_or_raise(step)
    stored = self._manager.item_metadata(step)["state"]
    found = {sharding.path_str(p): tuple(m.shape)
             for p, m in jax.tree_util.tree_flatten_with_path(stored.tree)[0]}
    expected = {}
    for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
      if getattr(x, "sharding", None) is None:
        raise ValueError(f"abstract_state leaf {sharding.path_str(p)} has no sharding; build it as "
                         "jax.ShapeDtypeStruct(shape, dtype, sharding=...) for the target mesh.")
      expected[sharding.path_str(p)] = _stored_shape(x)
    problems = [f"{k} (shape {v}) is missing from the checkpoint" if k not in found else
                f"{k} has shape {found[k]} in the checkpoint but the model expects {v}"
                for k, v in expected.items() if found.get(k) != v]
    problems += [f"the checkpoint has {k} (shape {v}) which the model does not have"
                 for k, v in found.items() if k not in expected]
    if problems:
      more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
      raise UserError(
          f"checkpoint {self.directory} step {step} does not match the model: "
          f"{problems[0]}{more}; use a checkpoint of the same config or start a new --workdir")

  def restore(self, step: int | None, abstract_state: PyTree) -> tuple[PyTree, dict]:
    """Restores `(state, meta)` of `step` (latest if None) into the shardings of `abstract_state`.

    `abstract_state` is e.g. `jax.eval_shape(init_fn)` with a sharding attached to every leaf; no
    values are needed. Must be called on all processes.
    """
    step = self._step_or_raise(step)
    self.check_compatible(step, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_latest_intact(self, abstract_state: PyTree) -> tuple[int, PyTree, dict] | None:
    """`(step, state, meta)` of the newest checkpoint that restores; None without checkpoints.

    A checkpoint that fails to restore (a missing or corrupt array file, metadata or manifest) is
    moved aside to `<step>.damaged` (never deleted) with a warning naming the reason, and the one
    before it is tried. A checkpoint of another model is not damage: its `UserError` propagates.
    Raises `UserError` when checkpoints exist but none restores. Must be called on all processes.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, abstract_state)
        return step, state, meta
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Any read failure is damage.
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        aside = self._move_aside(step)
        logging.warning("Checkpoint %d in %s cannot be restored (%s); moved to %s, trying the "
                        "previous one.", step, self.directory, reason, aside)
        print(f"warning: checkpoint {step} cannot be restored ({reason}); moved to {aside}, "
              "resuming from the previous one.", flush=True)
        damaged.append(step)
    if damaged:
      raise UserError(f"No checkpoint in {self.directory} restores (damaged: {damaged}, moved to "
                      "<step>.damaged); delete the workdir's checkpoints/ to start over, or "
                      "restore them from a backup.")
    return None

  def _move_aside(self, step: int):
    """Renames checkpoint `step` to `<step>.damaged` (or `.damaged-N`); returns the new path."""
    source = self.directory / str(step)
    target, n = self.directory / f"{step}.damaged", 1
    while target.exists():
      n += 1
      target = self.directory / f"{step}.damaged-{n}"
    if jax.process_index() == 0:
      source.rename(target)
    multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    self._manager.reload()
    return target

  def wait_until_finished(self) -> None:
    """Blocks until the save in flight (if any) is committed; re-raises its error if it failed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the save in flight and releases orbax's threads. Call it before exiting."""
    self.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _checkpoint_root(path: str) -> str:
  """A workdir (holding `checkpoints/`) or a checkpoint root itself."""
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def save_params(directory: str, params: PyTree, meta: dict) -> None:
  """Writes a parameters-only checkpoint (`{'params': params}` as step 0, with JSON `meta`, e.g.
  the model config) in the same format as training checkpoints, synchronously."""
  with Checkpointer(directory, save_interval_steps=1, max_to_keep=1, async_save=False) as ckpt:
    ckpt.save(0, {"params": params}, meta, force=True)


def _open_existing(path: str, step: int | None, item_handlers: dict
                   ) -> tuple[str, Any, int]:
  """(root, a read-only manager on it, the step to read: `step` or the latest) for a training
  workdir, checkpoint root or `save_params` directory; MissingPathError if there is none."""
  root = os.path.abspath(_checkpoint_root(path))
  if not os.path.isdir(root):
    raise MissingPathError(f"No checkpoint directory at {path}; pass a training --workdir, its "
                           "checkpoints/ folder, or a directory written by "
                           "videococa.tools.convert.")
  manager = ocp.CheckpointManager(root, item_handlers=item_handlers)
  steps = sorted(manager.all_steps())
  if not steps or (step is not None and step not in steps):
    manager.close()
    raise MissingPathError(f"No checkpoint {'' if step is None else f'for step {step} '}in "
                           f"{root} (available steps: {steps}).")
  return root, manager, steps[-1] if step is None else step


def read_meta(path: str, step: int | None = None) -> dict:
  """The JSON meta of checkpoint `step` (latest if None) of a training workdir, checkpoint root or
  `save_params` directory, without reading any array."""
  _, manager, step = _open_existing(path, step, {"meta": ocp.JsonCheckpointHandler()})
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    manager.close()


def load_params(path: str, step: int | None = None,
                sharding: jax.sharding.Sharding | None = None) -> tuple[PyTree, dict]:
  """Reads only `params` (and the meta) of a training workdir, checkpoint root or `save_params`
  directory; the optimizer state is not read. Arrays land on `sharding` (default: first device)."""
  root, manager, step = _open_existing(path, step, {
      "state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
  try:
    tree = manager.item_metadata(step)["state"].tree
    if "params" not in tree:
      raise UserError(f"Checkpoint {root} step {step} holds no 'params'.")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree["params"])}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore()))
    return restored["state"]["params"], restored["meta"]
  finally:
    manager.close()
