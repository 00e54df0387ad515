"""The backbone alone, two modes of scripts/benchmark.py that split the training step's time.

- 'backbone': ResNet-18 as the HTT runs it (the config's dtype and BatchNorm fold, frozen
  statistics) on the frames of one batch (batch_size x T): the forward pass, and forward +
  backward to the parameters (the images need no gradient), so that a gap to the PyTorch
  baseline can be put on one of the two.
- 'conv_layers': each distinct convolution of ResNet-18 at the config's image size
  (`flops.resnet18_convolutions`), compiled alone on the same frames: forward, the gradient for
  its input ('dgrad'; the stem's is never needed) and for its kernel ('wgrad'). Where the model
  computes a convolution as a sum over taps instead (small maps on CPU, models/convolution.py),
  the layer has a second entry, implementation 'taps'.

Both run on the first device with random inputs; their PyTorch counterparts are
`htt_jax/baselines/torch_backbone.py`, started in its own process by `baseline.py`.
"""

import time
from typing import Any, Callable, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from htt_jax import config_lib
from htt_jax.benchmark import flops as flops_lib
from htt_jax.benchmark import hardware, timing
from htt_jax.models import build_model, convolution
from htt_jax.models.resnet import ResNet18

MODES = ("backbone", "conv_layers")
_NHWC = ("NHWC", "HWIO", "NHWC")


def backbone_model(config) -> ResNet18:
  """The ResNet-18 that `build_model(config)` runs inside the HTT (same dtype, fold, remat and
  backend workarounds)."""
  htt = build_model(config)
  return ResNet18(dtype=htt.dtype, remat=htt.remat, batch_norm=htt.batch_norm,
                  fold_batch_norm=htt.fold_batch_norm, cpu_kernels=htt.cpu_kernels)


def _compiled(fn: Callable, *args):
  """(fn compiled for args, seconds to lower and compile)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _median_ms(fn: Callable, args, config) -> float:
  return timing.median_ms(lambda: jax.block_until_ready(fn(*args)), config.warmup_steps,
                          config.timed_steps)


def _backbone_row(config, device, frames: int) -> Dict[str, Any]:
  model = backbone_model(config)
  height, width = config.dataset.image_size
  rng = np.random.default_rng(config.seed)
  x = jax.device_put(rng.normal(size=(frames, height, width, 3)).astype(np.float32), device)
  variables = jax.jit(model.init)(jax.random.key(config.seed), x[:1])

  def loss(params):
    return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x).sum()

  forward, forward_s = _compiled(loss, variables["params"])
  both, both_s = _compiled(jax.grad(loss), variables["params"])
  times = timing.time_steps(lambda: jax.block_until_ready(both(variables["params"])),
                            config.warmup_steps, config.timed_steps)
  row = timing.summarize(times, frames, config.batch_size, 1)
  forward_ms = _median_ms(forward, (variables["params"],), config)
  row.update(compile_time_s=forward_s + both_s, forward_time_ms_median=forward_ms,
             forward_backward_time_ms_median=row["step_time_ms_median"],
             backward_time_ms_median=row["step_time_ms_median"] - forward_ms)
  # Forward + backward as in a training step: twice the forward again, less the stem's dgrad.
  parts = flops_lib.resnet18_flops(height, width)
  flops_per_frame = 3 * sum(parts.values()) - parts["conv1"]
  peak = hardware.peak_tflops(device.device_kind, config.dtype)
  total, _, mfu = timing.achieved(flops_per_frame * frames, row["step_time_ms_median"] / 1e3, 1,
                                  peak)
  row.update(flops_per_frame_analytic=flops_per_frame, model_tflops_per_second=total,
             peak_tflops_per_device=peak, mfu=mfu)
  return row


def _conv_layer_rows(config, device, frames: int) -> List[Dict[str, Any]]:
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  rng = np.random.default_rng(config.seed)
  cpu_kernels = backbone_model(config).cpu_kernels
  rows = []
  for shape in flops_lib.resnet18_convolutions(*config.dataset.image_size):
    strides = (shape.stride, shape.stride)
    padding = ((shape.padding, shape.padding),) * 2
    x = jax.device_put(rng.normal(size=(frames, shape.height, shape.width, shape.in_channels))
                       .astype(np.float32), device).astype(dtype)
    kernel = jax.device_put(rng.normal(size=(shape.kernel, shape.kernel, shape.in_channels,
                                             shape.out_channels)).astype(np.float32),
                            device).astype(dtype)
    variants = [("lax", lambda a, b: lax.conv_general_dilated(
        a, b, strides, padding, dimension_numbers=_NHWC))]
    if cpu_kernels and convolution.use_taps((shape.height, shape.width), (shape.kernel,) * 2,
                                            strides, padding):
      variants.append(("taps", lambda a, b: convolution.conv_taps(a, b, strides, padding)))
    for implementation, conv in variants:
      g = jnp.asarray(rng.normal(size=jax.eval_shape(conv, x, kernel).shape), dtype)
      forward, forward_s = _compiled(conv, x, kernel)
      dgrad, dgrad_s = _compiled(lambda a, b, g, conv=conv: jax.vjp(lambda a: conv(a, b), a)[1](g),
                                 x, kernel, g)
      wgrad, wgrad_s = _compiled(lambda a, b, g, conv=conv: jax.vjp(lambda b: conv(a, b), b)[1](g),
                                 x, kernel, g)
      rows.append({"layer": shape.name, "implementation": implementation, "count": shape.count,
                   "input_size": [shape.height, shape.width],
                   "in_channels": shape.in_channels, "out_channels": shape.out_channels,
                   "kernel": shape.kernel, "stride": shape.stride, "padding": shape.padding,
                   "compile_time_s": forward_s + dgrad_s + wgrad_s,
                   "forward_ms_median": _median_ms(forward, (x, kernel), config),
                   "dgrad_ms_median": _median_ms(dgrad, (x, kernel, g), config),
                   "wgrad_ms_median": _median_ms(wgrad, (x, kernel, g), config)})
  return rows


def measure(config, mode: str) -> Dict[str, Any]:
  """Measures one setting of a backbone mode; returns its row without the shared fields."""
  if mode not in MODES:
    raise config_lib.ConfigError(f"--mode={mode!r} is not one of {list(MODES)}")
  device = jax.devices()[0]
  frames = config.batch_size * config.model.num_frames
  row: Dict[str, Any] = {"mode": mode, "num_devices": 1, "device_kind": device.device_kind,
                         "platform": device.platform, "warmup_steps": config.warmup_steps,
                         "timed_steps": config.timed_steps, "frames": frames}
  if mode == "backbone":
    row.update(_backbone_row(config, device, frames))
  else:
    layers = _conv_layer_rows(config, device, frames)
    row.update(layers=layers, compile_time_s=sum(r["compile_time_s"] for r in layers))
  return row
