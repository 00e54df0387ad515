"""Data parallelism: the one place that chooses jit or pmap (`config.parallelism`), shards batches
and pads the last one, for training (`make_train_step`) and for the forward pass (`Forward`).

'jit' (default): `jax.jit` over a 1-D ('data',) mesh of every device of every host (Auto axis
  type); the state is replicated, batches are sharded on 'data' and assembled from each host's
  part with `jax.make_array_from_process_local_data`; XLA inserts the gradient all-reduce.
'pmap': the same body under `jax.pmap(axis_name='data', in_axes=(None, 0), out_axes=None)` with an
  un-replicated state; `losses` and `steps.train_step` sum each device's share with `lax.psum`.
Both compute the same global loss and gradient, so they give the same numbers (tested).

`Forward` is the one compiled forward pass: evaluation (evaluate.py), `inference.Predictor` and
the benchmark's eval mode all run `steps.forward` through it. Under pmap it maps over this
process's devices only (no collective is needed, and a Predictor runs on one process alone).
With several processes pmap's state is host-local: checkpointing saves it as global arrays.
"""

import contextlib
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from htt_jax import config_lib, steps
from htt_jax.models import build_model

DATA_AXIS = "data"


def create_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over all devices (of all processes) with the Auto axis type."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def local_devices(mesh) -> list:
  """This process's devices of the mesh, in mesh order."""
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch, mesh):
  """Host-local numpy batch (this process's clips) -> global arrays sharded on 'data'."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def as_local(tree):
  """Each array replicated over the devices of several processes (a checkpoint restored in a
  multi-process run, `create_train_state`'s state) as its copy on this process's first device of
  it: `device_put` cannot move an array that is not fully addressable onto this process's devices
  alone (pmap's broadcast argument, a Predictor's local mesh); a replicated copy is the whole
  value. Other leaves unchanged."""
  def convert(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_data(0)
    return x
  return jax.tree.map(convert, tree)


def make_jit_train_step(config, mesh, learning_rate_fn=None, freeze: bool = True) -> Callable:
  """train_step compiled over the mesh; donates the state. Call it inside `jax.set_mesh(mesh)`."""
  step = functools.partial(steps.train_step, config=config, learning_rate_fn=learning_rate_fn,
                           freeze=freeze)
  return jax.jit(step, in_shardings=(replicated(mesh), data_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_pmap_train_step(config, learning_rate_fn=None, freeze: bool = True) -> Callable:
  """train_step under pmap: state broadcast in and returned un-replicated, batch split on axis 0.

  The batch given to it has a leading device axis: (local devices, clips per device, ...).
  """
  step = functools.partial(steps.train_step, config=config, learning_rate_fn=learning_rate_fn,
                           axis_name=DATA_AXIS, freeze=freeze)
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


def make_train_step(config, mesh, learning_rate_fn=None,
                    freeze: bool = True) -> Tuple[Callable, Callable]:
  """(train_step, to_device) for `config.parallelism`; `freeze` as `steps.train_step` takes it.

  `to_device` turns this process's host batch into the step's input (a global array sharded on
  'data' for jit; split per local device of the mesh for pmap). Call both inside
  `jax.set_mesh(mesh)`.
  """
  if config.parallelism == "pmap":
    num_local = len(local_devices(mesh))
    return (make_pmap_train_step(config, learning_rate_fn, freeze),
            lambda batch: split_for_pmap(batch, num_local))
  return (make_jit_train_step(config, mesh, learning_rate_fn, freeze),
          lambda batch: global_batch(batch, mesh))


def _clip_major(outputs, num_clips: int):
  """pose_attention (L, B*T/t, t, t) -> (B, L, T/t, t, t); action_attention (L, B, ...) ->
  (B, L, ...): every output then has the clip axis first, so it can be sharded and padded."""
  out = dict(outputs)
  if "pose_attention" in out:
    a = out["pose_attention"]
    a = a.reshape((a.shape[0], num_clips, a.shape[1] // num_clips) + a.shape[2:])
    out["pose_attention"] = a.swapaxes(0, 1)
  if "action_attention" in out:
    out["action_attention"] = out["action_attention"].swapaxes(0, 1)
  return out


class Forward:
  """The model's forward pass, compiled once for `config.parallelism` over `mesh`.

  `forward(variables, batch)` takes this process's clips: a dict with at least the model inputs
  (`steps.MODEL_INPUTS`, numpy, leading clip axis, any number of clips; other keys are ignored).
  It runs them in compiled batches of `host_batch_size` clips (the last one padded with copies of
  its last clip, so nothing recompiles), sharded over the mesh (jit) or split per local device
  (pmap), and returns numpy outputs for exactly those clips, every one with the clip axis first
  (with `return_attention`, pose_attention is (clips, L, T/t, t, t) and action_attention
  (clips, L, T+1, T+1)). `keys` limits what is copied back to the host; the compiled program is
  the same whatever it is.

  `batch_size` (default `config.eval_batch_size`) counts clips per call over all the processes of
  the mesh, as `config.eval_batch_size` does; each process's share is rounded up to a multiple of
  its devices. With several processes, every process must call with the same number of clips
  (collectives inside), as evaluation's padded batches do.
  """

  def __init__(self, config, mesh=None, batch_size: Optional[int] = None,
               return_attention: bool = False, keys: Optional[Sequence[str]] = None):
    self.mesh = create_mesh() if mesh is None else mesh
    self.pmap = config.parallelism == "pmap"
    self.keys = None if keys is None else tuple(keys)
    self.local_devices = local_devices(self.mesh)
    num_processes = len({d.process_index for d in self.mesh.devices.flat})
    batch_size = batch_size or config.eval_batch_size
    if batch_size <= 0 or batch_size % num_processes:
      raise config_lib.ConfigError(f"a forward batch of {batch_size} clips (e.g. "
                                   f"config.eval_batch_size) does not split over {num_processes} "
                                   "processes")
    num_local = len(self.local_devices)
    self.host_batch_size = -(-(batch_size // num_processes) // num_local) * num_local
    model = build_model(config)

    def body(variables, batch):
      outputs = steps.forward(model.apply, variables, batch, return_attention=return_attention)
      return _clip_major(outputs, batch[steps.MODEL_INPUTS[0]].shape[0])

    if self.pmap:
      # This process's devices only: the forward pass has no collective, and a Predictor runs on
      # one process while the others do not call it (pmap's default spans every process).
      self.step = jax.pmap(body, axis_name=DATA_AXIS, in_axes=(None, 0),
                           devices=self.local_devices)
    else:
      self.step = jax.jit(body, in_shardings=(replicated(self.mesh), data_sharded(self.mesh)),
                          out_shardings=data_sharded(self.mesh))

  def place(self, variables):
    """Variables where the step reads them (no copy if already there)."""
    if self.pmap or len(self.local_devices) == self.mesh.devices.size:  # this process's only
      variables = as_local(variables)
    if self.pmap:
      # pmap broadcasts its un-mapped argument from wherever it is, as the training loop's state.
      return jax.device_put(variables, self.local_devices[0])
    with jax.set_mesh(self.mesh):
      return jax.device_put(variables, replicated(self.mesh))

  def to_device(self, batch):
    """`host_batch_size` clips of this process -> the step's input (model inputs only)."""
    inputs = {k: np.asarray(batch[k]) for k in steps.MODEL_INPUTS}
    with jax.set_mesh(self.mesh):
      if self.pmap:
        return split_for_pmap(inputs, len(self.local_devices))
      return global_batch(inputs, self.mesh)

  def to_host(self, outputs) -> Dict[str, np.ndarray]:
    """The step's outputs -> numpy, this process's clips only, in its input order."""
    keys = outputs.keys() if self.keys is None else self.keys
    if self.pmap:  # (local devices, clips per device, ...)
      return {k: np.asarray(outputs[k]).reshape((-1,) + outputs[k].shape[2:]) for k in keys}
    return {k: _local_rows(outputs[k]) for k in keys}

  def __call__(self, variables, batch) -> Dict[str, np.ndarray]:
    num_clips = len(batch[steps.MODEL_INPUTS[0]])
    if num_clips == 0:
      raise ValueError("no clips to run the forward pass on")
    variables = self.place(variables)
    size, chunks = self.host_batch_size, []
    # No mesh around the pmap: its program spans this process's devices, not the mesh's.
    with contextlib.nullcontext() if self.pmap else jax.set_mesh(self.mesh):
      for start in range(0, num_clips, size):
        inputs = {k: _pad(np.asarray(batch[k])[start:start + size], size)
                  for k in steps.MODEL_INPUTS}
        outputs = self.to_host(self.step(variables, self.to_device(inputs)))
        chunks.append({k: v[:num_clips - start] for k, v in outputs.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """`size` rows: x, then copies of its last row (a full batch, so nothing recompiles)."""
  if len(x) == size:
    return x
  return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def _local_rows(array) -> np.ndarray:
  """A global array sharded on 'data' -> this process's rows as numpy (all of them on one host)."""
  if array.is_fully_addressable:
    return np.asarray(array)
  shards = {s.index[0].start or 0: s.data for s in array.addressable_shards}
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
