"""What a measurement ran on: peak FLOP rates per device, software versions, the git commit.

Imports neither JAX nor TensorFlow nor PyTorch, so the PyTorch baseline process can use it too.
"""

import os
import platform
import subprocess
from typing import Dict, Optional

from htt_jax import config_lib

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


# The widest x86 vector extension a CPU reports (a flag of /proc/cpuinfo), widest first: the
# 2-core machines this project is timed on come with and without AVX-512 (docs/demo.md).
_ISA_FLAGS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"))


# AMD's x86 families and model ranges by core generation (AMD's processor programming references):
# "AMD EPYC" alone, as these cloud machines name their CPU, does not tell Zen 3 from Zen 4 or 5,
# and the demo's and the suite's times differ between them (docs/benchmarks.md).
_AMD_GENERATIONS = ((23, range(0x00, 0x30), "Zen/Zen+"), (23, range(0x30, 0x100), "Zen 2"),
                    (25, range(0x00, 0x10), "Zen 3"), (25, range(0x10, 0x20), "Zen 4"),
                    (25, range(0x20, 0x60), "Zen 3"), (25, range(0x60, 0x80), "Zen 4"),
                    (25, range(0xA0, 0xB0), "Zen 4"), (26, range(0x00, 0x100), "Zen 5"))


def describe_cpu(cpuinfo: str) -> Dict[str, Optional[str]]:
  """{'model': the first 'model name', 'isa': the widest of _ISA_FLAGS in the first 'flags',
  'generation': e.g. 'Zen 3, family 25 model 1' (the core generation where this table knows the
  vendor's family and model, else just the numbers)} of a /proc/cpuinfo text (None for what it
  does not say; ARM's 'Features' give no x86 isa)."""
  fields = {}
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if sep and key.strip() not in fields:
      fields[key.strip()] = value.strip()
  flags = set(fields.get("flags", "").split())
  isa = next((name for flag, name in _ISA_FLAGS if flag in flags), None)
  generation = None
  family, model = fields.get("cpu family", ""), fields.get("model", "")
  if family.isdigit() and model.isdigit():
    generation = f"family {family} model {model}"
    if fields.get("vendor_id") == "AuthenticAMD":
      name = next((name for f, models, name in _AMD_GENERATIONS
                   if f == int(family) and int(model) in models), None)
      generation = f"{name}, {generation}" if name else generation
  return {"model": fields.get("model name") or None, "isa": isa, "generation": generation}


def host_cpu() -> Dict[str, Optional[str]]:
  """This machine's CPU model and widest vector extension (describe_cpu of /proc/cpuinfo; on other
  systems the model from `platform.processor()` and no isa)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      return describe_cpu(f.read())
  except OSError:
    return {"model": platform.processor() or None, "isa": None, "generation": None}


def xla_isa_limit(xla_flags: str) -> Optional[str]:
  """The value of the last `--xla_cpu_max_isa=` in an XLA_FLAGS string (e.g. 'AVX2'), else None.

  XLA:CPU then generates code for that ISA at most, whatever the CPU has: a timing made so is not
  the CPU's own (docs/demo.md times the demo with AVX-512 code held to AVX2)."""
  values = [flag.partition("=")[2] for flag in xla_flags.split()
            if flag.startswith("--xla_cpu_max_isa=")]
  return (values[-1] or None) if values else None


def cpu_summary() -> str:
  """'AMD EPYC (Zen 5, family 26 model 2), AVX-512, 2 CPUs': what a timing on this machine should
  be reported with; 'AVX-512 (XLA code held to AVX2)' where XLA_FLAGS limits XLA's ISA."""
  cpu = host_cpu()
  model = cpu["model"] or "unknown CPU"
  parts = [f"{model} ({cpu['generation']})" if cpu["generation"] else model]
  isa = cpu["isa"] or "unknown ISA"
  limit = xla_isa_limit(os.environ.get("XLA_FLAGS", ""))
  if limit:
    parts.append(f"{isa} (XLA code held to {limit})")
  elif cpu["isa"]:
    parts.append(isa)
  count = available_cpus()
  return ", ".join(parts + [f"{count} CPU{'s' if count != 1 else ''}"])


def available_cpus() -> int:
  """CPUs this process may run on (its affinity mask, e.g. under taskset), not the machine's."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def pin_cpus(count: int) -> int:
  """Restricts this process (and the processes it starts) to its first `count` CPUs.

  Both JAX's thread pools and PyTorch's then share the same cores; 0 leaves the affinity alone.
  Returns the number of CPUs in use.
  """
  if count > 0 and hasattr(os, "sched_setaffinity"):
    allowed = sorted(os.sched_getaffinity(0))
    if count > len(allowed):
      raise config_lib.ConfigError(f"config.cpu_threads={count} but this process may use only "
                                   f"{len(allowed)} CPUs")
    os.sched_setaffinity(0, allowed[:count])
  return available_cpus()
