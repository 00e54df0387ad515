"""The PyTorch side of the benchmark's backbone modes: ResNet-18 alone, and its convolutions alone.

Run by `torch_benchmark` in the baseline's own process (never beside TensorFlow or JAX), with the
spec that `htt_jax.benchmark.baseline.spec` makes for --mode=backbone or --mode=conv_layers:
`frames` images of `image_size`, float32 or bfloat16 autocast (`dtype`), `warmup_steps` untimed
and `timed_steps` timed calls; each time is the median of the timed calls.

- backbone: `torch_htt.ResNet18` in eval mode (frozen BatchNorm, as the paper configs train it):
  the forward pass, and forward + backward to the parameters (the images need no gradient).
- conv_layers: each distinct convolution (`flops.resnet18_convolutions`), called alone: forward,
  the gradient for its input ('dgrad') and for its kernel ('wgrad'), each through the operator
  autograd itself calls for a convolution's backward, asked for that one gradient.
"""

import contextlib
from typing import Any, Callable, Dict, List

import numpy as np
import torch

from htt_jax.baselines import torch_htt
from htt_jax.benchmark import flops, timing

MODES = ("backbone", "conv_layers")


def _median_ms(step: Callable[[], None], spec: Dict[str, Any], sync: Callable[[], None]) -> float:
  def blocking():
    step()
    sync()
  return timing.median_ms(blocking, spec.get("warmup_steps", 2), spec.get("timed_steps", 5))


def _backbone(spec, device, autocast, sync) -> Dict[str, Any]:
  torch.manual_seed(spec.get("seed", 0))
  model = torch_htt.ResNet18().to(device).eval()
  height, width = spec["image_size"]
  generator = torch.Generator().manual_seed(spec.get("seed", 0))
  x = torch.randn(spec["frames"], 3, height, width, generator=generator).to(device)

  def forward():
    with torch.no_grad(), autocast():
      model(x)[0].sum()

  def forward_backward():
    model.zero_grad(set_to_none=True)
    with autocast():
      loss = model(x)[0].float().sum()
    loss.backward()

  both = _median_ms(forward_backward, spec, sync)
  forward_ms = _median_ms(forward, spec, sync)
  return {"forward_time_ms_median": forward_ms, "forward_backward_time_ms_median": both,
          "backward_time_ms_median": both - forward_ms,
          "frames_per_second": spec["frames"] / both * 1e3}


def _conv_layers(spec, device, autocast, sync) -> List[Dict[str, Any]]:
  rng = np.random.default_rng(spec.get("seed", 0))
  frames = spec["frames"]
  rows = []
  for shape in flops.resnet18_convolutions(*spec["image_size"]):
    stride, padding = shape.stride, shape.padding
    x = torch.from_numpy(rng.normal(size=(frames, shape.in_channels, shape.height, shape.width))
                         .astype(np.float32)).to(device)
    kernel = torch.from_numpy(rng.normal(size=(shape.out_channels, shape.in_channels,
                                               shape.kernel, shape.kernel))
                              .astype(np.float32)).to(device)

    def forward(x=x, kernel=kernel, stride=stride, padding=padding):
      with torch.no_grad(), autocast():
        return torch.nn.functional.conv2d(x, kernel, stride=stride, padding=padding)

    g = torch.randn_like(forward().float())

    def backward(mask, x=x, kernel=kernel, g=g, stride=stride, padding=padding):
      with torch.no_grad(), autocast():
        torch.ops.aten.convolution_backward(g, x, kernel, None, [stride] * 2, [padding] * 2,
                                            [1, 1], False, [0, 0], 1, mask)

    rows.append({"layer": shape.name, "implementation": "torch",
                 "forward_ms_median": _median_ms(forward, spec, sync),
                 "dgrad_ms_median": _median_ms(lambda b=backward: b([True, False, False]),
                                               spec, sync),
                 "wgrad_ms_median": _median_ms(lambda b=backward: b([False, True, False]),
                                               spec, sync)})
  return rows


def measure(spec: Dict[str, Any], device) -> Dict[str, Any]:
  """The times of `spec["mode"]` on `device` (torch_benchmark has set threads and denormals)."""
  if spec["mode"] not in MODES:
    raise ValueError(f"unknown backbone mode {spec['mode']!r}; one of {list(MODES)}")
  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  bf16 = spec.get("dtype", "float32") == "bfloat16"
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else (
      contextlib.nullcontext)
  if spec["mode"] == "backbone":
    return _backbone(spec, device, autocast, sync)
  return {"layers": _conv_layers(spec, device, autocast, sync)}
