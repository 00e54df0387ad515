"""What a measurement ran on: peak FLOP rates per device, software versions, the git commit (the
host's CPUs: htt_jax/machine.py).

Imports neither JAX nor TensorFlow nor PyTorch, so the PyTorch baseline process can use it too.
"""

import os
import platform
import subprocess
from typing import Dict, Optional


# Peak dense (no sparsity) TFLOP/s per chip or GPU, from the vendors' spec sheets. 'float32' is the
# rate a float32 model gets by default: on NVIDIA Ampere and Hopper both XLA (default matmul
# precision) and cuDNN convolutions (PyTorch's default allow_tf32 for cuDNN) use TF32 tensor cores,
# so that is the TF32 dense rate. Google publishes no float32 rate for TPUs (XLA runs float32
# matrix products as bfloat16 passes), hence None there; MFU is then not reported.
PEAK_TFLOPS = {
    # Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e), per chip.
    "tpu_v4": {"bfloat16": 275.0, "float32": None},
    "tpu_v5e": {"bfloat16": 197.0, "float32": None},
    "tpu_v5p": {"bfloat16": 459.0, "float32": None},
    "tpu_v6e": {"bfloat16": 918.0, "float32": None},
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe, 40 and 80 GB): BF16 312, TF32 156.
    "a100": {"bfloat16": 312.0, "float32": 156.0},
    # NVIDIA H100 datasheet (halving its with-sparsity figures): SXM BF16 989.4, TF32 494.7;
    # PCIe 756.5 / 378; NVL 835.5 / 417.5.
    "h100_sxm": {"bfloat16": 989.4, "float32": 494.7},
    "h100_pcie": {"bfloat16": 756.5, "float32": 378.0},
    "h100_nvl": {"bfloat16": 835.5, "float32": 417.5},
    # NVIDIA H200 datasheet: SXM as H100 SXM (BF16 989.4, TF32 494.7); NVL 835.5 / 417.5.
    "h200_sxm": {"bfloat16": 989.4, "float32": 494.7},
    "h200_nvl": {"bfloat16": 835.5, "float32": 417.5},
}

# JAX's device_kind strings for TPUs (v5e and v6e report themselves as "lite").
_TPU_KINDS = {"tpu v4": "tpu_v4", "tpu v5 lite": "tpu_v5e", "tpu v5e": "tpu_v5e",
              "tpu v5": "tpu_v5p", "tpu v5p": "tpu_v5p", "tpu v6 lite": "tpu_v6e",
              "tpu v6e": "tpu_v6e"}


def chip_name(device_kind: str) -> Optional[str]:
  """A key of PEAK_TFLOPS for a JAX device_kind or a torch.cuda device name; None if unknown."""
  kind = device_kind.strip().lower()
  if kind in _TPU_KINDS:
    return _TPU_KINDS[kind]
  # NVIDIA names: "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL",
  # "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe".
  for gpu in ("h200", "h100"):
    if gpu in kind:
      if "nvl" in kind:
        return f"{gpu}_nvl"
      return f"{gpu}_pcie" if "pcie" in kind else f"{gpu}_sxm"
  if "a100" in kind:
    return "a100"
  return None


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  """Peak dense TFLOP/s of a device for 'float32' or 'bfloat16'; None on CPUs and unknown chips."""
  chip = chip_name(device_kind)
  return None if chip is None else PEAK_TFLOPS[chip].get(dtype)


def versions(*modules: str) -> Dict[str, Optional[str]]:
  """python and each named, already importable package's version (None when not installed)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version()}
  for name in modules:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_commit(path: Optional[str] = None) -> Optional[str]:
  """`git rev-parse HEAD` of the checkout holding this package; None outside a git checkout."""
  path = path or os.path.dirname(os.path.abspath(__file__))
  try:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                            text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  if result.returncode != 0:
    return None
  return result.stdout.strip() or None
