"""The PyTorch baseline, run in a subprocess (`htt_jax.baselines.torch_benchmark`), and the ratio.

The baseline is the independent PyTorch model of the same network (`htt_jax/baselines/torch_htt.py`)
on one device, with the same per-device work as our row: batch_size / num_devices clips of T frames
at the same image size. Our row's `speedup_vs_baseline` is ours per device over the fastest
baseline variant of the same dtype, i.e. against the strongest PyTorch setting we measured. On
CPUs our devices share the cores, so the baseline takes the whole batch and our total is compared
(`compared_devices`).
The baseline has no rematerialisation; `model.remat` and `parallelism` do not change it, so one
baseline measurement serves every row that differs only in those (a cache keyed by its spec).
For the backbone modes (backbone.py) it is `torch_htt.ResNet18`, or that network's convolutions,
alone on the same frames (`htt_jax/baselines/torch_backbone.py`), float32 or bfloat16 autocast;
'backbone' reports our speed-up on forward + backward.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, Optional

from htt_jax import config_lib, machine
from htt_jax.benchmark import flops as flops_lib
from htt_jax.benchmark import hardware, timing

BASELINES = ("none", "torch")
BACKBONE_MODES = ("backbone", "conv_layers")  # backbone.py; torch_backbone.py in the subprocess.
# The pipeline modes have no PyTorch counterpart here.
BASELINE_MODES = ("train", "eval") + BACKBONE_MODES
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check(config, mode: str = "train") -> None:
  """Raises ConfigError when `config.baseline` cannot run for this config in `mode`."""
  if config.baseline not in BASELINES:
    raise config_lib.ConfigError(
        f"config.baseline={config.baseline!r} is not one of {list(BASELINES)}")
  if config.baseline != "torch":
    return
  if importlib.util.find_spec("torch") is None:
    raise config_lib.ConfigError("config.baseline='torch' needs PyTorch: pip install -e '.[torch]'")
  if mode in BACKBONE_MODES:  # ResNet-18 alone: the heads' widths do not matter.
    return
  m = config.model
  if m.hidden_dim != 512:  # The reference feeds ResNet features straight into d-wide layers.
    raise config_lib.ConfigError(f"config.baseline='torch' needs config.model.hidden_dim=512 "
                                 f"(the reference's d), not {m.hidden_dim}")
  if m.num_layers_pose != m.num_layers_action:
    raise config_lib.ConfigError(
        "config.baseline='torch' needs config.model.num_layers_pose == "
        "config.model.num_layers_action (the reference has one num_layers)")


def compared_devices(row: Dict[str, Any]) -> int:
  """Over how many of our devices the baseline's one device is compared: each GPU or TPU is one
  (the baseline gets a device's share of the batch); CPU devices (XLA's forced host devices)
  share the same cores, so there the baseline runs the whole batch on all of them, against our
  total."""
  return 1 if row.get("platform") == "cpu" else row["num_devices"]


def spec(config, mode: str, num_devices: int) -> Dict[str, Any]:
  """The JSON arguments of `torch_benchmark` for one of our settings."""
  m = config.model
  if mode in BACKBONE_MODES:  # The frames of one batch on one device, as backbone.py runs them.
    return {"mode": mode, "frames": config.batch_size * m.num_frames,
            "image_size": list(config.dataset.image_size), "dtype": config.dtype,
            "warmup_steps": config.warmup_steps, "timed_steps": config.timed_steps,
            "threads": machine.available_cpus(), "seed": config.seed}
  return {
      "mode": "eval" if mode == "eval" else "train",
      "batch_size": config.batch_size // num_devices,
      "num_frames": m.num_frames, "window": m.window,
      "image_size": list(config.dataset.image_size),
      "num_joints": m.num_joints, "num_objects": m.num_objects, "num_actions": m.num_actions,
      "hidden_dim": m.hidden_dim, "num_heads": m.num_heads, "mlp_dim": m.mlp_dim,
      "num_layers": m.num_layers_pose, "pose_loss": config.loss.pose_loss,
      "loss_weights": {k: config.loss[k] for k in ("lambda_hand_2d", "lambda_hand_z",
                                                   "lambda_object", "lambda_action")},
      "loss_normalization": config.loss_normalization, "learning_rate": config.learning_rate,
      "adam_b1": config.adam_b1, "adam_b2": config.adam_b2, "adam_eps": config.adam_eps,
      "warmup_steps": config.warmup_steps, "timed_steps": config.timed_steps,
      "threads": machine.available_cpus(), "seed": config.seed,
  }


def run_torch(args: Dict[str, Any], timeout_s: Optional[float] = None) -> Dict[str, Any]:
  """Runs `python -m htt_jax.baselines.torch_benchmark` on `args`; returns its JSON result."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH")) if p)
  with tempfile.TemporaryDirectory() as tmp:
    output = os.path.join(tmp, "baseline.json")
    command = [sys.executable, "-m", "htt_jax.baselines.torch_benchmark",
               f"--json-args={json.dumps(args)}", f"--output={output}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    if done.returncode != 0 or not os.path.exists(output):
      raise RuntimeError(f"the PyTorch baseline failed (exit {done.returncode}):\n"
                         f"{done.stderr[-4000:]}")
    with open(output) as f:
      return json.load(f)


def _attach_backbone(row: Dict[str, Any], result: Dict[str, Any]) -> None:
  """The baseline's times beside ours; for 'backbone' also our speed-up on forward + backward."""
  fields = {k: v for k, v in result.items() if k not in ("mode", "platform")}
  row["baseline"] = {"implementation": "torch", **fields}
  row["baseline_variant"] = f"eager_{row['dtype']}"
  if row["mode"] == "backbone":
    row["baseline_frames_per_second"] = result["frames_per_second"]
    row["speedup_vs_baseline"] = (result["forward_backward_time_ms_median"]
                                  / row["forward_backward_time_ms_median"])
  else:
    row["baseline_frames_per_second"] = row["speedup_vs_baseline"] = None


def attach(row: Dict[str, Any], result: Dict[str, Any], config, mode: str) -> None:
  """Adds the baseline's variants (with model TFLOP/s and MFU) and our speed-up to `row`."""
  if mode in BACKBONE_MODES:
    _attach_backbone(row, result)
    return
  compared = compared_devices(row)
  clips = config.batch_size // compared
  flops_per_step = flops_lib.htt_flops_per_clip(config, train=mode != "eval") * clips
  variants = []
  for variant in result["variants"]:
    peak = hardware.peak_tflops(result["device_kind"], variant["dtype"])
    total, _, mfu = timing.achieved(flops_per_step, variant["step_time_ms_median"] / 1e3, 1, peak)
    variants.append(dict(variant, model_tflops_per_second=total, peak_tflops_per_device=peak,
                         mfu=mfu))
  same_dtype = [v for v in variants if v["dtype"] == config.dtype]
  best = max(same_dtype, key=lambda v: v["frames_per_second"]) if same_dtype else None
  row["baseline"] = {"implementation": "torch", "device_kind": result["device_kind"],
                     "torch_version": result["torch_version"], "threads": result["threads"],
                     "batch_size": clips, "variants": variants}
  row["baseline_variant"] = best["variant"] if best else None
  row["baseline_frames_per_second"] = best["frames_per_second"] if best else None
  row["speedup_vs_baseline"] = (row["frames_per_second"] / compared / best["frames_per_second"]
                                if best else None)


class BaselineRunner:
  """Runs the baseline once per distinct spec (a sweep over remat or parallelism reuses it)."""

  def __init__(self):
    self._results: Dict[str, Dict[str, Any]] = {}

  def __call__(self, config, mode: str, num_devices: int) -> Dict[str, Any]:
    args = spec(config, mode, num_devices)
    key = json.dumps(args, sort_keys=True)
    if key not in self._results:
      self._results[key] = run_torch(args)
    return self._results[key]
