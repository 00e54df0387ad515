"""Times the PyTorch reference model (`torch_htt.TemporalNetRef`): the benchmark's baseline.

Runs in its own process, started by `htt_jax.benchmark.baseline`:

  python -m htt_jax.baselines.torch_benchmark --json-args='{"mode": "train", ...}' --output=r.json

because PyTorch and TensorFlow must not share a process (torch.optim imports triton, whose LLVM
crashes once TensorFlow's is loaded); this module imports neither TensorFlow nor JAX.
The train step is what the authors' loop does per batch: forward, the reference losses, backward,
Adam. Variants: eager float32 everywhere; on a GPU also bfloat16 autocast and `torch.compile`
(each dtype). The modes 'backbone' and 'conv_layers' time ResNet-18 alone (`torch_backbone`).
Images are given already normalised (x/255 - 0.5, NCHW), as the reference's loader
delivers them; the BatchNorm statistics stay frozen as in the reference. PyTorch's other defaults
are kept (on a GPU: TF32 for cuDNN convolutions, full float32 for matrix products).
"""

import argparse
import contextlib
import json
import sys
import time
from typing import Any, Dict, List

import torch

from htt_jax.baselines import torch_backbone, torch_htt
from htt_jax import storage
from htt_jax.benchmark import timing

VARIANTS = ("eager_float32", "eager_bfloat16", "compile_float32", "compile_bfloat16")


def default_variants(cuda: bool) -> List[str]:
  """Eager float32 on a CPU; on a GPU also bfloat16 autocast and torch.compile."""
  return list(VARIANTS) if cuda else ["eager_float32"]


def _inputs(spec: Dict[str, Any], device) -> Dict[str, torch.Tensor]:
  """Random inputs and labels of the reference's layout (frames flattened clip-major)."""
  generator = torch.Generator().manual_seed(spec.get("seed", 0))
  clips, frames = spec["batch_size"], spec["num_frames"]
  n, joints = clips * frames, spec["num_joints"]
  height, width = spec["image_size"]
  intrinsics = torch.tensor([[200.0, 0, width / 2], [0, 200.0, height / 2], [0, 0, 1]])
  joints3d = torch.cat([torch.rand(n, joints, 2, generator=generator) * 0.2 - 0.1,
                        torch.rand(n, joints, 1, generator=generator) * 0.3 + 0.3], -1)
  uv = joints3d[..., :2] / joints3d[..., 2:] * 200.0 + torch.tensor([width / 2, height / 2])
  tensors = {
      "images": torch.rand(n, 3, height, width, generator=generator) - 0.5,
      "intrinsics": intrinsics.expand(n, 3, 3).contiguous(),
      "not_padding": torch.ones(n),
      "joints25d": torch.cat([uv, joints3d[..., 2:]], -1),
      "joints3d": joints3d,
      "object_labels": torch.randint(spec["num_objects"], (n,), generator=generator),
      "action_labels": torch.randint(spec["num_actions"], (clips,), generator=generator),
  }
  return {k: v.to(device) for k, v in tensors.items()}


def _model(spec: Dict[str, Any], device) -> torch_htt.TemporalNetRef:
  torch.manual_seed(spec.get("seed", 0))
  return torch_htt.TemporalNetRef(
      spec["num_joints"], spec["num_objects"], spec["num_actions"], window=spec["window"],
      num_frames=spec["num_frames"], hidden_dim=spec["hidden_dim"], num_heads=spec["num_heads"],
      mlp_dim=spec["mlp_dim"], num_layers=spec["num_layers"],
      pose_loss=spec.get("pose_loss", "l1"), **spec.get("loss_weights", {})).to(device)


def _step_fn(spec: Dict[str, Any], variant: str, device):
  """A function running one blocking step of `variant`."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown baseline variant {variant!r}; one of {list(VARIANTS)}")
  cuda = device.type == "cuda"
  model = _model(spec, device)
  forward = torch.compile(model) if variant.startswith("compile") else model
  bf16 = variant.endswith("bfloat16")
  autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else (
      contextlib.nullcontext)
  inputs = _inputs(spec, device)
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  if spec["mode"] == "eval":
    model_inputs = {k: inputs[k] for k in ("images", "intrinsics", "not_padding")}

    def step():
      with torch.inference_mode(), autocast():
        forward(**model_inputs, return_attention=False)
      sync()
    return step

  optimizer = torch.optim.Adam(model.parameters(), lr=spec.get("learning_rate", 3e-5),
                               betas=(spec.get("adam_b1", 0.9), spec.get("adam_b2", 0.999)),
                               eps=spec.get("adam_eps", 1e-8))
  normalization = spec.get("loss_normalization", "clip")

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      out = forward(**inputs, loss_normalization=normalization, return_attention=False)
    out["loss/total"].backward()
    optimizer.step()
    sync()
  return step


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Measures every variant of `spec` (see module docstring), or one of the backbone modes
  (`torch_backbone`); returns a JSON-able dict."""
  threads = int(spec.get("threads") or 0)
  if threads > 0:
    torch.set_num_threads(threads)
  # XLA's CPU runtime flushes denormals to zero (as TensorFlow does); PyTorch by default does not,
  # and Adam's second moments of tiny gradients then turn denormal and make a CPU step several
  # times slower, erratically. Same floating-point environment for both.
  torch.set_flush_denormal(True)
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  result = {"device_kind": torch.cuda.get_device_name(device) if cuda else "cpu",
            "platform": "gpu" if cuda else "cpu", "torch_version": torch.__version__,
            "threads": torch.get_num_threads(), "mode": spec["mode"]}
  if spec["mode"] in torch_backbone.MODES:
    result.update(torch_backbone.measure(spec, device))
    return result
  variants = spec.get("variants") or default_variants(cuda)
  frames = spec["batch_size"] * spec["num_frames"]
  result["variants"] = []
  for variant in variants:
    step = _step_fn(spec, variant, device)
    if cuda:
      torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()  # The first step compiles (torch.compile) and warms up the allocator and kernels.
    first_step_s = time.perf_counter() - start
    times = timing.time_steps(step, spec.get("warmup_steps", 2), spec.get("timed_steps", 5))
    row = {"variant": variant, "dtype": variant.split("_")[1],
           "compiled": variant.startswith("compile"), "first_step_s": first_step_s,
           "peak_memory_bytes_device": torch.cuda.max_memory_allocated(device) if cuda else None}
    row.update(timing.summarize(times, frames, spec["batch_size"], 1))
    result["variants"].append(row)
    del step
    if cuda:
      torch.cuda.empty_cache()
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--json-args", required=True, help="the measurement, as a JSON object")
  parser.add_argument("--output", default="", help="write the result here (default: stdout)")
  args = parser.parse_args(argv)
  result = run(json.loads(args.json_args))
  text = json.dumps(result)
  if args.output:
    storage.write_text(args.output, text)
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
