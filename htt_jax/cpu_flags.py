"""Per-process XLA:CPU settings that an entry point makes before JAX starts: the YNNPACK fusions
(`--xla_cpu_experimental_ynn_fusion_type`, by dtype) and glibc malloc's handling of XLA's
per-execution temporaries (`configure_malloc`, below the fusions' functions).

Settings and why (jax/jaxlib 0.12; the measurements are in docs/benchmarks.md):
- float32: the reduction fusions alone, `--xla_cpu_experimental_ynn_fusion_type=reduce`
  (`FLOAT32_FUSIONS`). They make XLA:CPU's sums over N, H, W (every bias and BatchNorm gradient)
  about 10x faster, so float32 training is fastest with them, with either BatchNorm. Adding the
  elementwise fusions (`eltwise,reduce`) was slower once the ResNet keeps its convolution inputs
  materialised on CPU (models/resnet.py).
- bfloat16: off (`OFF`, the flag with an empty value). With any YNNPACK fusion on, bfloat16
  ResNet-18 on XLA:CPU returns NaNs (tests/test_model.py's bfloat16 test fails with `eltwise`,
  `reduce` or both). JAX's own default turns fusions on, so a process that runs bfloat16 on the CPU
  must turn them off before JAX starts; `models.build_model` logs a warning
  (`warn_if_unsafe_for_bfloat16`) when a bfloat16 model is built on the CPU and XLA_FLAGS does not.
- a process that runs several configs gets one flag: off unless every config wants the same.

JAX reads XLA_FLAGS once, when it starts its CPU backend, so the choice is made by the process's
entry point before JAX starts; importing `htt_jax` changes no environment variable:
- the scripts call `configure(configs)` with every config the process will run, first thing;
- the test session (tests/conftest.py) calls `set_safe_default()`: fusions off, safe for every
  dtype; processes started by tests inherit it;
- a `--xla_cpu_experimental_ynn_fusion_type` the user put in XLA_FLAGS is never changed.
"""

import ctypes
import os
from typing import Iterable

from absl import logging

from htt_jax import machine  # no JAX: safe before JAX starts

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
OFF = f"{YNN_FLAG}="
FLOAT32_FUSIONS = f"{YNN_FLAG}=reduce"  # either BatchNorm
# Set beside XLA_FLAGS when the value came from us, so that `configure` (also in child processes,
# which inherit both) may change it, and a user's own setting is left alone.
_OURS = "HTT_JAX_YNN_FLAG_SET_BY_HTT_JAX"


def _replace(flags: str, value: str) -> str:
  kept = [f for f in flags.split() if not f.startswith(YNN_FLAG + "=")]
  return " ".join(kept + [value])


def _current(flags: str):
  """The YNNPACK flag XLA_FLAGS holds (the last one wins), or None."""
  return next((f for f in reversed(flags.split()) if f.startswith(YNN_FLAG + "=")), None)


def set_safe_default() -> None:
  """Turns the fusions off unless XLA_FLAGS already chooses (for entry points that do not know
  their dtype yet, e.g. the test session); `configure` may still change it."""
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG not in flags:
    os.environ["XLA_FLAGS"] = _replace(flags, OFF)
    os.environ[_OURS] = "1"


def fusions_for(config) -> str:
  """The flag for runs like `config` (docstring above)."""
  return FLOAT32_FUSIONS if str(config.dtype) == "float32" else OFF


def configure(configs: Iterable) -> str:
  """Chooses the fusions for a process that will run `configs`; returns the flag in effect ('' for
  JAX's default, when JAX had started without one).

  Must run before JAX starts its backends (the scripts call it first thing in `main`). Also calls
  `configure_malloc()`.
  """
  configure_malloc()
  flags = os.environ.get("XLA_FLAGS", "")
  current = _current(flags)  # None: JAX's default (fusions on)
  if os.environ.get(_OURS) != "1" and current is not None:
    logging.info("XLA:CPU YNNPACK fusions as set in XLA_FLAGS: %s", current)
    return current
  choices = {fusions_for(c) for c in configs}
  wanted = choices.pop() if len(choices) == 1 else OFF  # one flag per process: off if they differ
  if wanted != current:
    try:
      from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
      started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API: if it moves, assume not started
      started = False
    if started:
      logging.warning("JAX has already started; %s stays as it was (%s)", YNN_FLAG,
                      current or "JAX's default")
      return current or ""
    os.environ["XLA_FLAGS"] = _replace(flags, wanted)
    os.environ[_OURS] = "1"
  logging.info("XLA:CPU YNNPACK fusions: %s", wanted)
  return wanted


def warn_if_unsafe_for_bfloat16() -> bool:
  """Logs a warning unless XLA_FLAGS turns the YNNPACK fusions off (bfloat16 NaNs on XLA:CPU);
  returns whether it is safe. Only XLA_FLAGS is seen: JAX read it when its CPU backend started."""
  flag = _current(os.environ.get("XLA_FLAGS", ""))
  if flag == OFF:
    return True
  logging.log_first_n(logging.WARNING,
      "bfloat16 on XLA:CPU with YNNPACK fusions on (%s) gives NaNs: set XLA_FLAGS=%s before JAX "
      "starts, or call htt_jax.cpu_flags.configure([config]) first", 1, flag or "JAX's default", OFF)
  return False


# glibc's malloc and XLA:CPU. XLA:CPU mallocs each execution's temporaries (the demo's train step:
# one 353 MB block, and ~50 MB for each of Eigen's matrix products) and frees them at its end.
# glibc serves blocks over 32 MB from fresh mmaps (a thread's own arena cannot hold them) and
# unmaps them on free, so the kernel faults the memory in again page by page at every step: 86,000
# minor faults and 170 ms of system time a step on 2 cores. One arena that never mmaps nor trims
# keeps that memory for the next step: the demo's step 605 -> 558 ms (docs/benchmarks.md). One
# arena serialises the threads' mallocs, hence only on machines with few CPUs, where XLA:CPU's
# time matters and the input pipeline has few threads; compiling gets slower with it (the demo's
# two compiles 10.6 + 8.9 s against 9.0 + 7.9), so compile-bound work may opt out:
# HTT_JAX_MALLOC=glibc (the test session does).
MALLOC_MAX_CPUS = 8
MALLOC_ENV = "HTT_JAX_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc's <malloc.h>
# A malloc setting of the user's own (or another malloc preloaded): left alone.
_USER_MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_",
                    "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_malloc_configured = False


def configure_malloc() -> bool:
  """One glibc malloc arena, no mmap, no trimming (see above), for a process on a machine with at
  most MALLOC_MAX_CPUS CPUs; returns whether it is in effect. Left as it is without glibc, with
  more CPUs, or when the environment sets malloc itself (GLIBC_TUNABLES, MALLOC_*_, or a malloc in
  LD_PRELOAD), or with HTT_JAX_MALLOC=glibc. Values are unchanged; memory freed by the process
  stays with it until it exits. Call it before JAX and TensorFlow start their threads
  (`configure` does)."""
  global _malloc_configured
  if _malloc_configured:
    return True
  if os.environ.get(MALLOC_ENV) == "glibc":
    return False
  own = [k for k in _USER_MALLOC_ENV if os.environ.get(k)]
  if "malloc" in os.environ.get("LD_PRELOAD", ""):
    own.append("LD_PRELOAD")
  if own:
    logging.info("glibc malloc as the environment sets it (%s)", ", ".join(own))
    return False
  cpus = machine.available_cpus()
  if cpus > MALLOC_MAX_CPUS:
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc only)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  done = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
          and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
  if not done:
    logging.warning("glibc's mallopt refused one malloc arena without mmap; malloc as it was")
    return False
  _malloc_configured = True
  logging.info("glibc malloc: one arena, no mmap, no trimming (%d CPUs; htt_jax/cpu_flags.py)", cpus)
  return True
