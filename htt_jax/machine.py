"""This host's CPUs: which (model, core generation, widest vector extension) and how many this
process may use, so that every timing is reported with the machine it ran on (the demo's last line,
the benchmark's rows, the XLA:CPU settings of cpu_flags).

Imports neither JAX nor TensorFlow nor PyTorch: safe before JAX starts, and in the PyTorch
baseline's process.
"""

import os
import platform
from typing import Dict, Optional

from htt_jax import config_lib

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
