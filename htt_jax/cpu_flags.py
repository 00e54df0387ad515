"""XLA:CPU's YNNPACK fusions: on for the runs they speed up, off otherwise.

jax/jaxlib 0.12.0.1 on this project's 2-core x86 CPUs, `scripts/benchmark.py --mode=train`
(README, Benchmark). Since the ResNet materialises convolution inputs on CPU (models/resnet.py),
float32 training is fastest with YNNPACK's reduction fusions alone,
`--xla_cpu_experimental_ynn_fusion_type=reduce`, whatever the BatchNorm: 2026-12-03, AMD EPYC
(Zen 3), stored-statistics BatchNorm (the paper's training), median steps of alternating runs at
(96, 160, 2, 32, 16) 1758 / 1872 / 1855 ms against 1952 / 1958 / 2699 with `eltwise,reduce`,
and at (270, 480, 1, 32, 16) 7606 / 7568 against 9298 ms. (Before that change `eltwise,reduce`
was the faster one for stored statistics, because the elementwise fusions absorbed the
transposes' recomputation.) With batch-statistics BatchNorm (`model.batch_norm='batch'`, the
demo's 72x96 model) the reductions alone 774 vs 823 ms off, `eltwise,reduce` 898 ms (2026-11-25).
XLA's own emitter sums a (64, 24, 40, 64) gradient over N, H, W (every bias gradient) in 4.4 ms,
YNNPACK in 0.4 ms. And with any YNNPACK fusion on, bfloat16 ResNet-18 on XLA:CPU returns NaNs
(tests/test_model.py's bfloat16 test fails with `eltwise`, `reduce` or both). JAX reads the flag
once, when it starts its CPU backend, so the choice is per process:

- importing `htt_jax` turns the fusions off (safe for every run), `set_import_default`;
- the scripts call `configure(configs)` with every config the process will run, before JAX starts;
  float32 runs get the reduction fusions (`fusions_for`);
- a `--xla_cpu_experimental_ynn_fusion_type` the user put in XLA_FLAGS is never changed.
"""

import os
from typing import Iterable

from absl import logging

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
OFF = f"{YNN_FLAG}="
FLOAT32_FUSIONS = f"{YNN_FLAG}=reduce"  # either BatchNorm
# Set beside XLA_FLAGS when the value came from us, so that `configure` (also in child processes,
# which inherit both) may change it, and a user's own setting is left alone.
_OURS = "HTT_JAX_YNN_FLAG_SET_BY_HTT_JAX"


def _replace(flags: str, value: str) -> str:
  kept = [f for f in flags.split() if not f.startswith(YNN_FLAG + "=")]
  return " ".join(kept + [value])


def set_import_default() -> None:
  """Turns the fusions off unless XLA_FLAGS already chooses (called when `htt_jax` is imported)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG not in flags:
    os.environ["XLA_FLAGS"] = _replace(flags, OFF)
    os.environ[_OURS] = "1"


def fusions_for(config) -> str:
  """The flag measured fastest for runs like `config` (docstring above)."""
  return FLOAT32_FUSIONS if str(config.dtype) == "float32" else OFF


def configure(configs: Iterable) -> str:
  """Chooses the fusions for a process that will run `configs`; returns the flag in effect.

  Must run before JAX starts its backends (the scripts call it first thing in `main`).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  current = next((f for f in flags.split() if f.startswith(YNN_FLAG + "=")), OFF)
  if os.environ.get(_OURS) != "1" and YNN_FLAG in flags:
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
      logging.warning("JAX has already started; %s stays as it was (%s)", YNN_FLAG, current)
      return current
    os.environ["XLA_FLAGS"] = _replace(flags, wanted)
    os.environ[_OURS] = "1"
  logging.info("XLA:CPU YNNPACK fusions: %s", wanted)
  return wanted
