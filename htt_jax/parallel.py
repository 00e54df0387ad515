"""Data parallelism: one train-step body, compiled two ways.

'jit' (default): `jax.jit` over a 1-D ('data',) mesh of every device of every host (Auto axis
  type); the state is replicated, batches are sharded on 'data' and assembled from each host's
  part with `jax.make_array_from_process_local_data`; XLA inserts the gradient all-reduce.
'pmap': the same body under `jax.pmap(axis_name='data', in_axes=(None, 0), out_axes=None)` with an
  un-replicated state; `losses` and `steps.train_step` sum each device's share with `lax.psum`.
Both compute the same global loss and gradient, so they give the same numbers (tested).
"""

import functools
from typing import Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from htt_jax import steps

DATA_AXIS = "data"


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over all devices (of all processes) with the Auto axis type."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch, mesh):
  """Host-local numpy batch (this process's clips) -> global arrays sharded on 'data'."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def make_jit_train_step(config, mesh, learning_rate_fn=None) -> Callable:
  """train_step compiled over the mesh; donates the state. Call it inside `jax.set_mesh(mesh)`."""
  step = functools.partial(steps.train_step, config=config, learning_rate_fn=learning_rate_fn)
  return jax.jit(step, in_shardings=(replicated(mesh), data_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_pmap_train_step(config, learning_rate_fn=None) -> Callable:
  """train_step under pmap: state broadcast in and returned un-replicated, batch split on axis 0.

  The batch given to it has a leading device axis: (local devices, clips per device, ...).
  """
  step = functools.partial(steps.train_step, config=config, learning_rate_fn=learning_rate_fn,
                           axis_name=DATA_AXIS)
  return jax.pmap(step, axis_name=DATA_AXIS, in_axes=(None, 0), out_axes=None)


def split_for_pmap(local_batch, num_local_devices: int):
  """(clips, ...) -> (devices, clips / devices, ...)."""
  def split(x):
    x = np.asarray(x)
    if x.shape[0] % num_local_devices:
      raise ValueError(f"a host batch of {x.shape[0]} clips does not split over "
                       f"{num_local_devices} local devices")
    return x.reshape((num_local_devices, x.shape[0] // num_local_devices) + x.shape[1:])
  return jax.tree.map(split, local_batch)
