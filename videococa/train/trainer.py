"""The training state and the compiled, sharded CoCa train step.

`Trainer` owns the model, the optimizer and the shardings for one mesh: it builds the abstract
state (shapes + shardings, no allocation), initialises it directly sharded, and compiles the train
step ahead of time with explicit in/out shardings and the state donated.
"""
from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from videococa import extensions
from videococa.errors import UserError
from videococa.models import coca
from videococa.train import flops as flops_lib, losses, optim, sharding, validate

# bf16 dense peak per chip (TFLOP/s), matched against `device_kind`, for MFU.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6 lite": 918.0}


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_streak: jax.Array  # Consecutive skipped (non-finite) steps.
  nonfinite_total: jax.Array


def load_model_module(name: str):
  """`config.model_name` -> the module `videococa.models.<name>` exporting `Model` and `load`."""
  try:
    return importlib.import_module(f"videococa.models.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"videococa.models.{name}":
      raise  # A missing dependency of an existing model module: a real error.
    raise UserError(f"config.model_name={name!r}: no module videococa/models/{name}.py.") from e


def model_inputs(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """The frames (uint8: the model normalises them) and the text input tokens of a batch."""
  return batch["frames"], batch["text"][:, :-1]


def peak_flops_per_device(config: ml_collections.ConfigDict) -> float | None:
  if config.get("peak_tflops"):
    return config.peak_tflops * 1e12
  kind = jax.devices()[0].device_kind
  for name, tflops in PEAK_TFLOPS.items():
    if name in kind:
      return tflops * 1e12
  return None


class Trainer:
  """Model + optimizer + shardings for `mesh`, and the compiled train step, for one training stage
  (`stage` indexes `optim.stages(config)`: which parameters are frozen)."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh, stage: int = 0):
    extensions.load(config)
    validate.validate(config)
    self.config = config
    self.mesh = mesh
    self.model = load_model_module(config.model_name).Model(**config.model)
    self._dummy = coca.init_inputs(config.model, sharding.data_parallel_size(mesh),
                                   config.input.num_frames)
    with self.mesh_context():
      try:
        boxed = jax.eval_shape(self._init_params, jax.random.key(0))
      except (ValueError, TypeError) as e:  # A config the model cannot be built for.
        message = str(e).splitlines()[0]
        raise UserError(message if message.startswith("config.") else
                        f"config.model ({config.model_name}): {message}") from None
    self.param_shardings = sharding.logical_shardings(boxed, mesh)
    self.abstract_params = nn.unbox(boxed)
    self.stage = stage
    first_step, frozen_patterns = optim.stages(config)[stage]
    self.frozen = optim.is_frozen(frozen_patterns, self.abstract_params)
    self.tx, self.schedule = optim.make_optimizer(config.optimizer, self.abstract_params,
                                                  config.total_steps, frozen_patterns, first_step)
    replicated = NamedSharding(mesh, P())
    abstract_opt = jax.eval_shape(self.tx.init, self.abstract_params)
    self.state_shardings = TrainState(
        step=replicated, params=self.param_shardings,
        opt_state=sharding.matching_shardings(abstract_opt, self.abstract_params,
                                              self.param_shardings, mesh),
        nonfinite_streak=replicated, nonfinite_total=replicated)
    self._compiled_step = None
    self._flops = None

  def mesh_context(self):
    return sharding.use_mesh(self.mesh)

  def _init_params(self, rng):
    return self.model.init(rng, *self._dummy)["params"]

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, without allocating it."""
    with self.mesh_context():
      shapes = jax.eval_shape(self._init_state, jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def _init_state(self, rng) -> TrainState:
    return self._state_from_params(nn.unbox(self._init_params(rng)))

  def _state_from_params(self, params) -> TrainState:
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=self.tx.init(params),
                      nonfinite_streak=zero, nonfinite_total=zero)

  def init_state(self, params: Any | None = None) -> TrainState:
    """A fresh state at step 0 (seeded by `config.seed`), created directly sharded.

    `params`, when given (e.g. converted or inflated from another checkpoint, or taken from another
    mesh), replace the random initialisation; the optimizer state is initialised for them.
    """
    rng = jax.random.key(self.config.seed)
    with self.mesh_context():
      if params is None:
        return jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)
      return jax.jit(self._state_from_params, out_shardings=self.state_shardings)(params)

  def continue_from(self, state: TrainState) -> TrainState:
    """A state of another stage (another frozen set) carried into this one: same parameters, step
    and counters, with a fresh optimizer state for this stage's trainable parameters."""
    fresh = self.init_state(params=state.params)
    return fresh.replace(step=state.step, nonfinite_streak=state.nonfinite_streak,
                         nonfinite_total=state.nonfinite_total)

  def loss_fn(self, params, batch):
    """Total CoCa loss and metrics for a batch: `frames`, `text` `[batch, max_len + 1]`, and one
    `[batch, K, len]` array per extra text set of `config.input.extra_texts` (e.g. `negatives`,
    the contrastive loss's hard-negative texts of each example; the loss terms read the others)."""
    cfg = self.config.loss
    # Frozen sub-trees: no gradient is computed for them at all.
    params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.frozen)
    frames, text_in = model_inputs(batch)
    outputs = self.model.apply({"params": params}, frames, text_in)
    # Extra texts are encoded as captions are (their last token is only a target, as in `text`).
    for key in self.config.input.get("extra_texts", {}):
      texts = batch[key][..., :-1]
      emb, _ = self.model.apply({"params": params}, texts.reshape(-1, texts.shape[-1]),
                                method="encode_text")
      outputs[f"{key}_emb"] = emb.reshape(*texts.shape[:2], -1)
    labels = batch["text"][:, 1:]
    logits_fn = lambda h: self.model.apply({"params": params}, h, method="logits")  # noqa: E731
    return losses.coca_loss(outputs, labels, labels != self.config.model.text.pad_id, logits_fn,
                            contrastive_weight=cfg.contrastive_weight,
                            caption_weight=cfg.caption_weight, chunk_len=cfg.vocab_chunk_len,
                            label_smoothing=cfg.label_smoothing, terms=cfg.get("terms"))

  def _train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
    (_, metrics), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    # A non-finite loss or gradient skips the update: params and optimizer state stay as they were.
    # Not optax.apply_if_finite: it checks the gradient only, applies the update anyway after its
    # max_consecutive_errors (the loop stops the run instead), and keeps its counters in the
    # optimizer state, which a change of training stage (`continue_from`) re-initialises.
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_streak=(state.nonfinite_streak + 1) * skipped,
        nonfinite_total=state.nonfinite_total + skipped)
    metrics.update(grad_norm=grad_norm, learning_rate=self.schedule(state.step),
                   nonfinite_steps=new_state.nonfinite_total,
                   nonfinite_streak=new_state.nonfinite_streak)
    return new_state, metrics

  def batch_shardings(self, batch_shapes: dict[str, jax.ShapeDtypeStruct]) -> dict:
    return {k: sharding.batch_sharding(self.mesh, len(v.shape)) for k, v in batch_shapes.items()}

  def compile_step(self, batch_shapes: dict[str, jax.ShapeDtypeStruct]):
    """Compiles the train step for global batches of the given shapes (ahead of time)."""
    batch_shardings = self.batch_shardings(batch_shapes)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
                      for k, v in batch_shapes.items()}
    jitted = jax.jit(self._train_step, in_shardings=(self.state_shardings, batch_shardings),
                     out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())),
                     donate_argnums=(0,))
    abstract_state = self.abstract_state()
    with self.mesh_context():
      self._compiled_step = jitted.lower(abstract_state, abstract_batch).compile()
    self._flops = self.count_flops(batch_shapes)
    return self._compiled_step

  def step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    """One optimizer step (compiles on first use). `state` is donated: do not reuse it."""
    if self._compiled_step is None:
      self.compile_step({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})
    return self._compiled_step(state, batch)

  def flops_per_step(self) -> dict[str, float] | None:
    """FLOPs of one step per device, counted from the traced program (`videococa.train.flops`):
    'model' (3x the forward loss's matmuls: MFU's numerator) and 'hardware' (the matmuls the step
    executes, rematerialisation included: HFU's). None before the step is compiled."""
    return self._flops

  def xla_flops_per_step(self) -> float | None:
    """XLA's estimate for the compiled step, per device: it counts a `scan` body once, so scanned
    layers and vocabulary chunks are undercounted (see `videococa.train.flops`)."""
    if self._compiled_step is None:
      return None
    analysis = self._compiled_step.cost_analysis()
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and np.isfinite(flops) and flops > 0 else None

  def count_flops(self, batch_shapes: dict[str, jax.ShapeDtypeStruct]) -> dict[str, float]:
    """`flops_per_step` for global batches of `batch_shapes`, traced without compiling."""
    abstract_state = self.abstract_state()
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_shapes.items()}
    with self.mesh_context():
      forward = flops_lib.count(self.loss_fn, abstract_state.params, abstract_batch)
      step = flops_lib.count(self._train_step, abstract_state, abstract_batch)
    devices = self.mesh.size
    return dict(model=3 * forward.matmul / devices, hardware=step.matmul / devices)
