"""Tests of videococa.train.checkpoint on CPU with 8 fake devices (see conftest.py)."""
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding
import numpy as np
import optax
from orbax.checkpoint._src.path import atomicity
import pytest

from videococa.train.checkpoint import Checkpointer


def _mesh(shape):
  devices = np.array(jax.devices()[:np.prod(shape)]).reshape(shape)
  return jax.sharding.Mesh(devices, ("data", "fsdp", "tensor"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _train_state(seed=0):
  """A trainer-like state: nested params of several dtypes, adam state, step and typed RNG key."""
  rng = np.random.default_rng(seed)
  params = {
      "encoder": {"embedding": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 16)), jnp.float32)},
                  "norm": {"scale": jnp.asarray(rng.normal(size=(16,)), jnp.bfloat16)}},
      "head": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
               "ids": jnp.asarray(rng.integers(-5, 5, size=(8,)), jnp.int32)},
  }
  tx = optax.adam(1e-3)
  float_params = {"encoder": params["encoder"], "head": {"kernel": params["head"]["kernel"]}}
  opt_state = tx.init(float_params)
  _, opt_state = tx.update(jax.tree.map(jnp.ones_like, float_params), opt_state, float_params)
  return {"params": params, "opt_state": opt_state, "step": jnp.asarray(seed + 7, jnp.int32),
          "rng": jax.random.key(seed)}


def _abstract(state, shardings=None):
  """`jax.eval_shape`-style target with `shardings` (default: those of `state`) attached."""
  shardings = jax.tree.map(lambda x: x.sharding, state) if shardings is None else shardings
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(lambda: state), shardings)


def _bits(x):
  """The raw bytes of an array (typed PRNG keys as their key data), for bitwise comparison."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = np.asarray(x)
  return x.view(f"u{x.dtype.itemsize}")


def _assert_bitwise_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(_bits(g), _bits(w))


def _step_dirs(directory):
  return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit())


def test_roundtrip_is_bitwise_exact_with_async_save(tmp_path):
  state, meta = _train_state(), {"data_position": 1234, "config_hash": "abc123"}
  with Checkpointer(str(tmp_path), save_interval_steps=10, max_to_keep=3) as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(10, state, meta)
    ckpt.wait_until_finished()
    assert (tmp_path / "10" / "commit_success.txt").exists()
    assert _step_dirs(tmp_path) == ["10"]
  with Checkpointer(str(tmp_path), save_interval_steps=10, max_to_keep=3) as ckpt:
    assert ckpt.latest_step() == 10
    restored, restored_meta = ckpt.restore(None, _abstract(state))
  _assert_bitwise_equal(restored, state)
  assert restored_meta == meta
  assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(state["rng"])


def test_interval_force_and_max_to_keep(tmp_path):
  state = {"w": jnp.arange(4.0)}
  with Checkpointer(str(tmp_path), save_interval_steps=2, max_to_keep=2) as ckpt:
    saved = [step for step in range(1, 8) if ckpt.save(step, state, {"step": step})]
    assert saved == [2, 4, 6]
    assert ckpt.save(7, state, {"step": 7}, force=True)
    assert not ckpt.save(7, state, {"step": 7}, force=True)  # Already saved: no error, no save.
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [6, 7] and ckpt.latest_step() == 7
  assert _step_dirs(tmp_path) == ["6", "7"]


def test_interrupted_write_is_ignored(tmp_path, monkeypatch):
  state_10, state_20 = {"w": jnp.zeros(4)}, {"w": jnp.ones(4)}
  abstract = _abstract(state_10)
  with Checkpointer(str(tmp_path), save_interval_steps=10, max_to_keep=3) as ckpt:
    assert ckpt.save(10, state_10, {"step": 10})

  # Simulates a process killed after writing the arrays but before orbax's finalising rename.
  def killed(*args, **kwargs):
    raise RuntimeError("killed")
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", killed)
  dead = Checkpointer(str(tmp_path), save_interval_steps=10, max_to_keep=3)
  with pytest.raises(RuntimeError, match="killed"):
    dead.save(20, state_20, {"step": 20})
    dead.wait_until_finished()
  monkeypatch.undo()
  assert _step_dirs(tmp_path) == ["10", "20.orbax-checkpoint-tmp"]

  with Checkpointer(str(tmp_path), save_interval_steps=10, max_to_keep=3) as ckpt:
    assert ckpt.all_steps() == [10] and ckpt.latest_step() == 10
    restored, meta = ckpt.restore(None, abstract)
    _assert_bitwise_equal(restored, state_10)
    assert meta == {"step": 10}
    assert ckpt.save(20, state_20, {"step": 20})  # The same step again replaces the leftover.
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 20
    _assert_bitwise_equal(ckpt.restore(None, abstract)[0], state_20)
  assert _step_dirs(tmp_path) == ["10", "20"]


def test_resharding_restore(tmp_path):
  rng = np.random.default_rng(0)
  values = {"a": rng.normal(size=(16, 8)).astype(np.float32),
            "b": {"c": rng.normal(size=(8, 4)).astype(jnp.bfloat16)}}
  src = _mesh((8, 1, 1))
  src_specs = {"a": P("data", None), "b": {"c": P(None, None)}}
  state = jax.tree.map(lambda v, s: jax.device_put(v, NamedSharding(src, s)), values, src_specs)
  state["rng"] = jax.device_put(jax.random.key(3), NamedSharding(src, P()))
  with Checkpointer(str(tmp_path), save_interval_steps=1, max_to_keep=1) as ckpt:
    ckpt.save(1, state, {})

  dst = _mesh((2, 2, 2))
  targets = {
      "mesh (2,2,2)": {"a": NamedSharding(dst, P("data", ("fsdp", "tensor"))),
                       "b": {"c": NamedSharding(dst, P("tensor", None))},
                       "rng": NamedSharding(dst, P())},
      "one device": jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[5]), state),
  }
  with Checkpointer(str(tmp_path), save_interval_steps=1, max_to_keep=1) as ckpt:
    for name, shardings in targets.items():
      restored, _ = ckpt.restore(1, _abstract(state, shardings))
      _assert_bitwise_equal(restored, state)
      for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert got.sharding == want, name


def test_mismatching_config_names_param_and_shapes(tmp_path):
  state = _train_state()
  with Checkpointer(str(tmp_path), save_interval_steps=10, max_to_keep=1) as ckpt:
    ckpt.save(20, state, {})
    kernel = "params/encoder/embedding/kernel"
    bigger = jax.tree_util.tree_map_with_path(
        lambda p, x: (jnp.zeros((3, 3, 3, 128)) if jax.tree_util.keystr(p, simple=True,
                                                                         separator="/") == kernel
                      else x), state)
    with pytest.raises(ValueError) as e:
      ckpt.restore(20, _abstract(bigger))
    assert str(e.value).startswith(
        f"checkpoint {tmp_path} step 20 does not match the model: {kernel} has shape "
        "(3, 3, 3, 16) in the checkpoint but the model expects (3, 3, 3, 128)")
    assert "start a new --workdir" in str(e.value)

    params = state["params"]
    renamed = dict(state, params={"encoder": params["encoder"], "decoder": params["head"]})
    with pytest.raises(ValueError, match="params/decoder/ids \\(shape \\(8,\\)\\) is missing"):
      ckpt.check_compatible(20, _abstract(renamed))
    fewer = {k: v for k, v in state.items() if k != "step"}
    with pytest.raises(ValueError, match="the checkpoint has step \\(shape \\(\\)\\) which the model"):
      ckpt.check_compatible(20, _abstract(fewer))


def test_missing_checkpoint_and_bad_arguments(tmp_path):
  directory = tmp_path / "ckpt"
  abstract = _abstract({"w": jnp.zeros(2)})
  with Checkpointer(str(directory), save_interval_steps=1, max_to_keep=1) as ckpt:
    with pytest.raises(FileNotFoundError, match=f"no checkpoint in {directory} .available steps: "):
      ckpt.restore(None, abstract)
    ckpt.save(3, {"w": jnp.zeros(2)}, {})
    with pytest.raises(FileNotFoundError, match="for step 4 .* \\(available steps: \\[3\\]\\)"):
      ckpt.restore(4, abstract)
    with pytest.raises(ValueError, match="w has no sharding"):
      ckpt.restore(3, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(TypeError, match="JSON-serialisable"):
      ckpt.save(4, {"w": jnp.zeros(2)}, {"seed": np.arange(2)})
