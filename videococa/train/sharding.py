"""Device mesh, logical-axis rules and the shardings of parameters, optimizer state and batches.

Every parameter and activation in the models carries *logical* axis names (``'embed'``, ``'mlp'``,
``'activation_batch'``, ...). `LOGICAL_AXIS_RULES` is the one place that maps them onto the three mesh
axes (MaxText style):

* ``data``   - pure data parallelism: the batch is split, parameters are replicated.
* ``fsdp``   - fully sharded data parallelism: the batch is split *and* every parameter's embed
               dimension is split (ZeRO-3); XLA all-gathers weights just in time.
* ``tensor`` - tensor (Megatron) parallelism: attention heads, MLP hidden units and the vocabulary are
               split; activations stay whole on the embed dimension.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from videococa.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # Mesh axes the global batch is split over.

# Logical axis name -> mesh axis (or axes, or None = replicated). The single source of truth.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # Parameters.
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("queries", None),
    ("proj", None),
    ("positions", None),
    ("norm", None),
)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh from `{'data': n, 'fsdp': n, 'tensor': n}`.

  One size may be -1: it is filled with whatever devices remain. Axes are `Auto` (GSPMD propagation
  guided by the logical sharding constraints).
  """
  devices = list(jax.devices() if devices is None else devices)
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise UserError(f"config.mesh has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}.")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: at most one axis may be -1.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are not "
                      f"divisible by the fixed axes' product {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) > len(devices):
    raise UserError(f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                    f"{len(devices)} are available; set one axis to -1 to fill the rest.")
  if math.prod(sizes) < len(devices):
    logging.warning("config.mesh=%s uses %d of the %d devices.", dict(zip(MESH_AXES, sizes)),
                    math.prod(sizes), len(devices))
  device_grid = np.asarray(devices[:math.prod(sizes)]).reshape(sizes)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Sharding of a `[batch, ...]` array: batch split over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def logical_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` (abstract) values."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def path_keys(path) -> tuple[str, ...]:
  """A jax key path (DictKey, GetAttrKey, SequenceKey, ...) as a tuple of strings."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def matching_shardings(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree shaped like `params` somewhere inside (e.g. optimizer state).

  A leaf whose path ends with a parameter's path and whose shape equals that parameter's shape gets
  the parameter's sharding (Adam moments, momentum); anything else (counts, factored second moments)
  is replicated.
  """
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(param_shardings)):
    by_path[path_keys(path)] = (np.shape(p), s)
  replicated = NamedSharding(mesh, P())

  def pick(path, leaf):
    keys = path_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == np.shape(leaf):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, tree)


def process_batch_rows(mesh: Mesh, global_batch: int) -> np.ndarray:
  """Indices of the rows of a `[global_batch, ...]` batch that this process's devices hold, in the
  order `put_batch` expects them (ascending): what this process loads."""
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  rows = set()
  for (index,) in indices.values():
    rows.update(range(*index.indices(global_batch)))
  return np.asarray(sorted(rows), np.int64)


def put_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles global batch arrays from this process's slice (`[local_batch, ...]` numpy arrays).

  Each process passes the examples it loaded; the global batch is their concatenation in process
  order (`jax.make_array_from_process_local_data`), split over ('data', 'fsdp').
  """
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in local_batch.items()}


def path_matches(path_str: str, patterns: Sequence[str]) -> bool:
  """Whether a '/'-joined parameter path matches any of the regular expressions."""
  return any(re.search(p, path_str) for p in patterns)


def path_str(path) -> str:
  """A jax key path as a '/'-joined string: 'params/encoder/kernel'."""
  return "/".join(path_keys(path))


def local_batch_size(batch_size: int, mesh: Mesh, field: str = "config.input.batch_size") -> int:
  """This process's share of the global `batch_size`; checks that it splits evenly over the mesh's
  data-parallel axes and the processes (`field` names the config field in the error)."""
  dp, processes = data_parallel_size(mesh), jax.process_count()
  multiple = math.lcm(dp, processes)
  if not isinstance(batch_size, int) or batch_size <= 0 or batch_size % multiple:
    raise UserError(f"{field}={batch_size!r} is not a positive multiple of the data-parallel size "
                    f"{dp} (mesh data x fsdp = {dict(mesh.shape)}) and of the {processes} "
                    f"processes; use a multiple of {multiple}.")
  return batch_size // processes


def tree_paths(tree: Any) -> Any:
  """A tree of '/'-joined key paths, same structure as `tree`."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_str(path), tree)


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
  """Context for tracing: the mesh plus the logical-axis rules the sharding constraints use."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield
