"""One setting, measured: our train step, forward pass, tf.data pipeline, or pipeline + train step.

Everything goes through the library's own functions (`steps.create_train_state`,
`parallel.make_train_step`, evaluation's `parallel.Forward`, `input_pipeline.train_batches`),
compiled ahead of the timed loop (the compile time is measured apart), over the first
`num_devices` devices. The batch of 'train' and 'eval' is random and already on the devices, so
those modes time the step alone; 'end_to_end' adds reading, decoding, augmenting and transferring
each batch. TensorFlow is imported only by the modes that read data.
"""

import json
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np

from htt_jax import config_lib, parallel, steps
from htt_jax.benchmark import flops as flops_lib
from htt_jax.benchmark import hardware, timing
from htt_jax.models import build_model

MODES = ("train", "eval", "input", "end_to_end")
STEPS_PER_EPOCH = 10**6  # Only sets the learning-rate schedule, which does not change the speed.


def random_batch(config, batch_size: int, seed: int = 0) -> Dict[str, np.ndarray]:
  """A batch with every model input and label, like the pipeline's (uint8 images, valid frames)."""
  rng = np.random.default_rng(seed)
  frames, joints = config.model.num_frames, config.model.num_joints
  height, width = config.dataset.image_size
  intrinsics = np.array([[200.0, 0, width / 2], [0, 200.0, height / 2], [0, 0, 1]], np.float32)
  joints3d = np.concatenate([rng.uniform(-0.1, 0.1, (batch_size, frames, joints, 2)),
                             rng.uniform(0.3, 0.6, (batch_size, frames, joints, 1))], -1)
  uv = joints3d[..., :2] / joints3d[..., 2:] * 200.0 + np.array([width / 2, height / 2])
  batch = {
      "image": rng.integers(0, 256, (batch_size, frames, height, width, 3), dtype=np.uint8),
      "intrinsics": np.broadcast_to(intrinsics, (batch_size, frames, 3, 3)).copy(),
      "not_padding": np.ones((batch_size, frames), np.float32),
      "joints25d": np.concatenate([uv, joints3d[..., 2:]], -1).astype(np.float32),
      "joints3d": joints3d.astype(np.float32),
      "object": rng.integers(0, config.model.num_objects, (batch_size, frames), dtype=np.int32),
      "action": rng.integers(0, config.model.num_actions, (batch_size,), dtype=np.int32),
  }
  if config.dataset.get("augment", {}).get("on_device", False):
    # The reader's params for the step's own augmentation (augment/device.py): blur radii below
    # 0.5 give 3 taps (fw, ww, fw), ww = trunc(2^24 / (2 r + 1)).
    ww = rng.integers(2**23, 2**24, (batch_size, frames), dtype=np.int64)
    fw = (2**24 - ww) // 2
    batch.update({
        "aug_offset": rng.integers(-width // 10, width // 10 + 1, (batch_size, 2), dtype=np.int32),
        "aug_brightness": rng.uniform(0.5, 1.5, batch_size).astype(np.float32),
        "aug_saturation": rng.uniform(0.5, 1.5, batch_size).astype(np.float32),
        "aug_contrast": rng.uniform(0.5, 1.5, batch_size).astype(np.float32),
        "aug_hue_shift": rng.integers(0, 256, batch_size, dtype=np.int32),
        "aug_blur_weights": np.stack([fw, 2**24 - 2 * fw, fw], -1).astype(np.int32),
        "aug_order": np.argsort(rng.random((batch_size, frames, 4)), -1).astype(np.int32),
    })
  return batch


def resolve_devices(num_devices: int) -> List[jax.Device]:
  """The first `num_devices` devices (0: all of them)."""
  available = jax.devices()
  if num_devices == 0:
    return available
  if num_devices < 0 or num_devices > len(available):
    raise config_lib.ConfigError(f"config.num_devices={num_devices}: there are "
                                 f"{len(available)} devices (0 uses all)")
  if jax.process_count() > 1 and num_devices != len(available):
    raise config_lib.ConfigError(
        "config.num_devices must be 0 (all devices) with several processes")
  return available[:num_devices]


def _timed(fn: Callable[[], Any]):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _xla_stats(compiled, num_devices: int, frames_per_step: int) -> Dict[str, Any]:
  """Peak memory and FLOPs from XLA's analyses of the compiled per-device program."""
  out: Dict[str, Any] = {"peak_memory_bytes_xla": None, "memory_xla": None,
                         "flops_per_frame_xla": None}
  try:
    memory = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    memory = None
  if memory is not None:
    fields = ("argument", "output", "alias", "temp")
    out["memory_xla"] = {f"{f}_bytes": int(getattr(memory, f"{f}_size_in_bytes")) for f in fields}
    out["memory_xla"]["peak_bytes"] = int(getattr(memory, "peak_memory_in_bytes", 0)) or None
    # Arguments and outputs (less the donated buffers they share) live with the temporaries: the
    # bound the training loop logs, and one every backend reports.
    out["peak_memory_bytes_xla"] = sum(out["memory_xla"][f"{f}_bytes"] for f in fields[:2]) + (
        out["memory_xla"]["temp_bytes"] - out["memory_xla"]["alias_bytes"])
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    cost = None
  if isinstance(cost, (list, tuple)):  # Some versions return one dict per program.
    cost = cost[0] if cost else None
  if cost and cost.get("flops"):
    # Both jit (SPMD) and pmap compile one program per device: scale to the global step.
    out["flops_per_frame_xla"] = float(cost["flops"]) * num_devices / frames_per_step
  return out


def _device_peak_bytes(devices) -> Optional[int]:
  """Allocator high-water mark (GPU, TPU) over the devices; None where unreported (CPU).

  It is the process's peak so far: in a sweep, a setting shows at least its predecessors' value.
  """
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


_HOST_STATES: Dict[str, Any] = {}


def initial_state(config):
  """`steps.create_train_state` for the config, as host (numpy) arrays.

  Parameter and optimizer shapes depend only on the model keys, the seed and the optimizer, not on
  the batch, image size, dtype, remat or parallelism; so a sweep initialises once per model (the
  last one is kept) and each setting gets fresh device copies (a jit step donates its state).
  """
  model_keys = {k: v for k, v in config.model.items() if k != "remat"}
  key = json.dumps([model_keys, config.seed, config.learning_rate, config.lr_decay_epochs,
                    config.lr_decay_factor, config.adam_b1, config.adam_b2, config.adam_eps],
                   sort_keys=True)
  if key not in _HOST_STATES:
    _HOST_STATES.clear()
    state = steps.create_train_state(config, jax.random.key(config.seed), STEPS_PER_EPOCH)
    _HOST_STATES[key] = jax.device_get(state)
  # This setting's model (dtype, remat) and optimizer around the cached arrays.
  return _HOST_STATES[key].replace(apply_fn=build_model(config).apply,
                                   tx=steps.make_optimizer(config, STEPS_PER_EPOCH))


class _Program:
  """A compiled step over `devices`, what it carries, and how a host batch gets there: the
  training loop's step (`parallel.make_train_step`) or evaluation's forward (`parallel.Forward`)."""

  def __init__(self, config, devices, train: bool):
    self.config, self.devices, self.train = config, devices, train
    self.mesh = parallel.create_mesh(devices)
    self.pmap = config.parallelism == "pmap"
    state = initial_state(config)
    if train:
      self.fn, self._to_device = parallel.make_train_step(config, self.mesh)
      # Replicated, as the training loop places it (create_train_state): the compiled pmap step
      # (lowered ahead of time) takes its broadcast argument on every device, unlike a pmap call.
      with jax.set_mesh(self.mesh):
        self.state = jax.device_put(state, parallel.replicated(self.mesh))
    else:  # The forward pass reads parameters and statistics only.
      forward = parallel.Forward(config, self.mesh, batch_size=config.batch_size)
      self.fn, self._to_device = forward.step, forward.to_device
      self.state = forward.place({"params": state.params, "batch_stats": state.batch_stats})
      if self.pmap:  # Compiled ahead, as above: on every device of the program.
        self.state = jax.device_put(self.state, jax.sharding.NamedSharding(
            parallel.create_mesh(forward.local_devices), jax.sharding.PartitionSpec()))
    self.compiled = None
    self.lower_s = self.compile_s = None

  def to_device(self, host_batch):
    """This process's clips -> the step's input, as the training loop (or evaluation) makes it."""
    with jax.set_mesh(self.mesh):
      batch = self._to_device(host_batch)
      if self.pmap and jax.process_count() == 1:
        # Placed ahead, so the timed step copies nothing; with several processes pmap copies it
        # to the local devices, as in the training loop.
        return jax.device_put(batch, parallel.data_sharded(self.mesh))
      return batch

  def compile(self, batch) -> None:
    with jax.set_mesh(self.mesh):
      lowered, self.lower_s = _timed(lambda: self.fn.lower(self.state, batch))
      self.compiled, self.compile_s = _timed(lowered.compile)

  def run(self, batch) -> None:
    """One step, blocking until its results exist (the end of a timing window)."""
    with jax.set_mesh(self.mesh):
      out = self.compiled(self.state, batch)
      if self.train:
        self.state, out = out
      jax.block_until_ready((self.state, out))


def _input_batches(config):
  if not config.dataset.data_dir:
    raise config_lib.ConfigError(
        "this mode reads TFRecords: set --config.dataset.data_dir=DIR (made by "
        "scripts/prepare_data.py with the config's image size, T and t)")
  from htt_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  return input_pipeline.train_batches(config)


def measure(config, mode: str) -> Dict[str, Any]:
  """Measures one (already validated) setting; returns its row without the shared fields."""
  if mode not in MODES:
    raise config_lib.ConfigError(f"--mode={mode!r} is not one of {list(MODES)}")
  devices = resolve_devices(config.num_devices)
  n = len(devices)
  config_lib.validate_config(config, num_devices=n)
  frames_per_step = config.batch_size * config.model.num_frames
  warmup, steps_ = config.warmup_steps, config.timed_steps
  row: Dict[str, Any] = {"mode": mode, "num_devices": n, "device_kind": devices[0].device_kind,
                         "platform": devices[0].platform, "warmup_steps": warmup,
                         "compile_time_s": None, "lower_time_s": None}

  if mode == "input":  # This process's pipeline: its share of each global batch.
    batches = _input_batches(config)
    _, row["first_batch_s"] = _timed(lambda: next(batches))
    times = timing.time_steps(lambda: next(batches), warmup, steps_)
    processes = jax.process_count()
    clips = config.batch_size // processes
    row.update(timing.summarize(times, clips * config.model.num_frames, clips,
                                max(1, n // processes)))
    # No compiled program: the same keys as the other modes, empty.
    row.update({k: None for k in (
        "peak_memory_bytes_xla", "memory_xla", "flops_per_frame_xla", "peak_memory_bytes_device",
        "flops_per_frame_analytic", "flops_per_frame_analytic_unpadded", "model_tflops_per_second",
        "model_tflops_per_second_per_device", "peak_tflops_per_device", "mfu")})
    return row

  train = mode != "eval"
  program = _Program(config, devices, train)
  if mode == "end_to_end":
    batches = _input_batches(config)
    first, row["first_batch_s"] = _timed(lambda: next(batches))
    program.compile(program.to_device(first))
    step = lambda: program.run(program.to_device(next(batches)))
  else:
    local_clips = config.batch_size // jax.process_count()
    batch = program.to_device(random_batch(config, local_clips, config.seed + jax.process_index()))
    program.compile(batch)
    step = lambda: program.run(batch)
  row["lower_time_s"] = program.lower_s
  row["compile_time_s"] = program.lower_s + program.compile_s
  times = timing.time_steps(step, warmup, steps_)
  row.update(timing.summarize(times, frames_per_step, config.batch_size, n))
  row.update(_xla_stats(program.compiled, n, frames_per_step))
  row["peak_memory_bytes_device"] = _device_peak_bytes(devices)

  model_flops = flops_lib.htt_flops_per_frame(config, train)
  row["flops_per_frame_analytic"] = model_flops
  row["flops_per_frame_analytic_unpadded"] = flops_lib.htt_flops_per_frame(
      config, train, count_padding=False)
  peak = hardware.peak_tflops(row["device_kind"], config.dtype)
  total, per_device, mfu = timing.achieved(model_flops * frames_per_step,
                                           row["step_time_ms_median"] / 1e3, n, peak)
  row.update(model_tflops_per_second=total, model_tflops_per_second_per_device=per_device,
             peak_tflops_per_device=peak, mfu=mfu)
  return row
