"""Mesh construction, logical-axis rules, and sharded train steps equal to the 1-device step."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from videococa import config_utils
from videococa.data import inputs
from videococa.train import sharding, trainer as trainer_lib

MESHES = [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=4, tensor=1),
          dict(data=2, fsdp=2, tensor=2)]


def _config():
  config = config_utils.load_config("configs/coca.py:tiny")
  config.input.batch_size = 8
  return config


def test_make_mesh_fills_minus_one_and_rejects_bad_sizes():
  mesh = sharding.make_mesh(dict(data=-1, fsdp=2, tensor=2))
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh(dict(data=4, fsdp=4, tensor=1))
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.make_mesh(dict(data=-1, fsdp=-1))
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.make_mesh(dict(data=2, model=4))


def test_every_logical_axis_name_has_a_rule():
  trainer = trainer_lib.Trainer(_config(), sharding.make_mesh(dict(data=-1)))
  boxed = jax.eval_shape(trainer._init_params, jax.random.key(0))
  names = set()
  for spec in jax.tree.leaves(nn.get_partition_spec(boxed),
                              is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    names.update(n for n in spec if n is not None)
  assert names <= {name for name, _ in sharding.LOGICAL_AXIS_RULES}


def test_global_batch_must_split_over_data_parallel_axes():
  mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
  with pytest.raises(ValueError,
                     match="batch_size=12 is not a positive multiple of the data-parallel size 8"):
    sharding.local_batch_size(12, mesh)


@pytest.fixture(scope="module")
def single_device_step():
  """Initial params, a batch, and the loss / params after one step on one device."""
  config = _config()
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(dict(data=1), jax.devices()[:1]))
  state = trainer.init_state()
  init_params = jax.device_get(state.params)
  batch = inputs.random_batch(np.random.default_rng(0), 8, 1, config.model.vision.image_size,
                              config.model.max_len + 1, config.model.vocab_size)
  new_state, metrics = trainer.step(state, sharding.put_batch(batch, trainer.mesh))
  return config, init_params, batch, float(metrics["loss"]), jax.device_get(new_state.params)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_config", MESHES, ids=lambda m: "x".join(map(str, m.values())))
def test_sharded_step_equals_single_device_step(single_device_step, mesh_config):
  config, init_params, batch, loss, params = single_device_step
  config.mesh = mesh_config
  trainer = trainer_lib.Trainer(config, sharding.make_mesh(mesh_config))
  state = trainer.init_state(params=init_params)
  # Parameters really are split over the mesh (FSDP of the embed dim, heads over tensor).
  kernel = state.params["text_encoder"]["encoder"]["layers"]["self_attn"]["query"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  new_state, metrics = trainer.step(state, sharding.put_batch(batch, trainer.mesh))
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(new_state.params), params)
