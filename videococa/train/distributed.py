r"""Multi-process (multi-host) start-up: `initialize()` calls `jax.distributed.initialize()`.

Every command-line entry point that touches devices (train, evaluate) calls `initialize()` first,
before any JAX computation. One process runs per host (TPU VM, GPU node or, for tests, a CPU
process with its own fake devices); together the processes' devices form one global mesh.

How the processes find each other, in order:

1. Explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or the
   environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`). The
   coordinator is process 0's host; any free port that all processes agree on.
2. Auto-detected by `jax.distributed.initialize()` itself (its `jax/_src/clusters/`), used here when
   the environment shows a multi-process launch:
   * SLURM: `SLURM_JOB_ID`, `SLURM_STEP_NODELIST`, `SLURM_NTASKS` (> 1 here), `SLURM_PROCID`,
     `SLURM_LOCALID` (srun sets them). Coordinator: the first node of the step, port
     derived from the job id (or `JAX_COORDINATOR_PORT`); on GPUs each task then sees one GPU
     (`SLURM_LOCALID`) unless `JAX_LOCAL_DEVICE_IDS` says otherwise.
   * Open MPI (`mpirun`): `OMPI_MCA_orte_hnp_uri`, `OMPI_COMM_WORLD_SIZE` (> 1 here),
     `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_LOCAL_RANK`.
   * Cloud TPU VMs (libtpu installed and TPU chips present): the worker number and the workers'
     addresses come from the GCE metadata server (or `TPU_WORKER_ID` / `TPU_WORKER_HOSTNAMES` on
     GKE); coordinator: worker 0, port 8482. Also fine on a single-host TPU VM (one process).
   * Kubernetes (`KUBERNETES_SERVICE_HOST`, needs the `kubernetes` package) is left to an explicit
     `--distributed=true`.
3. Otherwise: a single process; nothing is initialised.

`--distributed=auto|true|false` (default auto) forces the choice: `true` always calls
`jax.distributed.initialize()` (with whatever of 1. is given, auto-detecting the rest), `false`
never does.

On CPU the cross-process collectives are enabled (`jax_cpu_collectives_implementation='gloo'`):
without them a multi-process CPU mesh cannot run computations spanning processes. The option only
concerns JAX's CPU backend.
"""
from __future__ import annotations

import glob
import importlib.util
import os

from absl import flags, logging
import jax

from videococa.errors import UserError

CPU_COLLECTIVES = "gloo"


def define_flags() -> None:
  """`--coordinator_address`, `--num_processes`, `--process_id`, `--distributed` (entry points)."""
  flags.DEFINE_string(
      "coordinator_address", None, "Multi-process: HOST:PORT of process 0's coordinator service "
      "(default $JAX_COORDINATOR_ADDRESS; auto-detected on TPU pods, SLURM and Open MPI).")
  flags.DEFINE_integer("num_processes", None,
                       "Multi-process: number of processes (default $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, "
                       "0..num_processes-1 (default $JAX_PROCESS_ID).")
  flags.DEFINE_enum("distributed", "auto", ["auto", "true", "false"],
                    "Whether to call jax.distributed.initialize(): auto = when the flags/env "
                    "above or a multi-process SLURM / Open MPI / TPU-pod launch are detected.")



def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"${name}={value!r} must be an integer.") from None


def _flag(name: str, default):
  """Flag `name`'s value if it is defined, parsed and given, else `default`."""
  if name not in flags.FLAGS:
    return default
  try:
    value = flags.FLAGS[name].value if flags.FLAGS.is_parsed() else None
  except flags.UnparsedFlagAccessError:
    value = None
  return default if value is None else value


def detected_cluster() -> str | None:
  """Name of a multi-process launch environment that `jax.distributed.initialize()` can
  auto-detect ('slurm', 'ompi', 'tpu'), or None."""
  env = os.environ
  if (all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                              "SLURM_PROCID", "SLURM_LOCALID"))
      and (_env_int("SLURM_NTASKS") or 1) > 1):
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in env and (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "ompi"
  if importlib.util.find_spec("libtpu") is not None and (
      glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")):
    return "tpu"
  return None


def _on_cpu() -> bool:
  """Whether JAX may use its CPU backend for the computations (no accelerator platform asked)."""
  platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
  return not platforms or "cpu" in platforms.split(",")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str | None = None) -> bool:
  """Starts JAX's distributed runtime if this is a multi-process run (see the module docstring).

  Arguments default to the command-line flags, then the environment. Returns whether
  `jax.distributed.initialize` was called (False for a single process or a second call). Must
  run before anything else touches the devices.
  """
  if jax.distributed.is_initialized():
    return False
  address = (coordinator_address or _flag("coordinator_address", None)
             or os.environ.get("JAX_COORDINATOR_ADDRESS") or None)
  count = num_processes if num_processes is not None else _flag(
      "num_processes", _env_int("JAX_NUM_PROCESSES"))
  index = process_id if process_id is not None else _flag(
      "process_id", _env_int("JAX_PROCESS_ID"))
  mode = mode or _flag("distributed", "auto")
  explicit = address is not None or count is not None or index is not None
  if mode == "false" or (mode == "auto" and not explicit and detected_cluster() is None):
    return False
  if count is not None and (count < 1 or (index is not None and not 0 <= index < count)):
    raise UserError(f"--process_id={index} must be in [0, --num_processes={count}).")
  if _on_cpu():
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
  logging.info("jax.distributed.initialize(coordinator_address=%s, num_processes=%s, "
               "process_id=%s)", address, count, index)
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index)
  except ValueError as e:  # Missing values that could not be auto-detected.
    raise UserError(f"cannot start the multi-process runtime: {e}; pass --coordinator_address, "
                    "--num_processes and --process_id (or set --distributed=false).") from e
  return True


_barrier_count = 0


def barrier(name: str, timeout_s: float = 3600) -> None:
  """Blocks until every process has reached `barrier(name)`; a no-op for a single process.

  Goes through the coordination service, not the devices. Used before the first train step: CPU
  (gloo) collectives give the processes only 30 s to meet when a communicator is first set up,
  which a process still compiling (or starved of CPU) can miss.
  """
  global _barrier_count
  if jax.process_count() == 1:
    return
  _barrier_count += 1
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = getattr(getattr(jax_distributed, "global_state", None), "client", None)
  if client is None:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f"videococa:{name}:{_barrier_count}", int(timeout_s * 1000))
