"""`run_benchmark(config, mode, output)`: measures every setting of `config.sweep`, writes the rows.

Config keys (configs/benchmark.py): the model and data keys of any config, plus `num_devices`
(first N devices; 0 = all), `warmup_steps`, `timed_steps`, `sweep` (sweep.py), `baseline`
('none' | 'torch') and `cpu_threads` (0 = every CPU of the process; N pins this process, and so
the PyTorch baseline it starts, to N CPUs, so both frameworks use the same cores).
All settings are validated before the first is measured; F.json is rewritten after each setting,
so a long sweep that dies keeps what it measured.
"""

import datetime
import gc
import os
import sys
from typing import Any, Dict, List, Optional

import jax
from absl import logging

from htt_jax import config_lib, machine, storage
from htt_jax.benchmark import backbone, baseline, hardware, measure, report, sweep, video_mode

MODES = measure.MODES + backbone.MODES + video_mode.MODES


def _describe(config) -> Dict[str, Any]:
  m = config.model
  return {"batch_size": config.batch_size, "image_size": list(config.dataset.image_size),
          "num_frames": m.num_frames, "window": m.window, "hidden_dim": m.hidden_dim,
          "dtype": config.dtype, "parallelism": config.parallelism, "remat": bool(m.remat)}


def prepare(config, overrides: Dict[str, Any], mode: str = "train"):
  """The config of one setting, validated (for its device count) before anything is compiled."""
  config = sweep.apply(config, overrides)
  config.eval_batch_size = config.batch_size  # 'eval' runs the forward pass on batch_size clips.
  devices = measure.resolve_devices(config.num_devices)
  config_lib.validate_config(config, num_devices=len(devices))
  config_lib.check_integer_at_least(config, "warmup_steps", 0)  # here, not after compiling
  config_lib.check_integer_at_least(config, "timed_steps", 1)
  baseline.check(config, mode)
  return config


def _versions(rows_baseline: Optional[Dict[str, Any]]) -> Dict[str, Optional[str]]:
  out = hardware.versions("jax", "jaxlib", "flax", "optax", "numpy")
  tf = sys.modules.get("tensorflow")
  if tf is not None:
    out["tensorflow"] = tf.__version__
  if rows_baseline:
    out["torch"] = rows_baseline["torch_version"]
  return out


def run_benchmark(config, mode: str, output: Optional[str] = None) -> List[Dict[str, Any]]:
  """Measures each setting in `mode`; writes F.json, F.md and F.png when `output` is given."""
  if mode not in MODES:
    raise config_lib.ConfigError(f"--mode={mode!r} is not one of {list(MODES)}")
  baseline.check(config, mode)
  cpu_threads = machine.pin_cpus(config.cpu_threads)
  settings = [(o, prepare(config, o, mode)) for o in sweep.settings(config.sweep)]
  # XLA_FLAGS as JAX read them: the YNNPACK fusions change CPU step times (cpu_flags.py).
  common = {"cpu_threads": cpu_threads, "host_cpu": machine.cpu_summary(),
            "git_commit": hardware.git_commit(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
  baselines = baseline.BaselineRunner()
  # Every process measures (collectives need them all); process 0 writes.
  if jax.process_index() != 0:
    output = None
  json_path = report.output_paths(output)[0] if output else None
  if json_path:  # a missing bucket or folder stops the run now, not after the measurements
    storage.check_writable(os.path.dirname(json_path) or ".")
  rows = []
  for i, (overrides, setting) in enumerate(settings):
    logging.info("benchmark %s, setting %d/%d: %s", mode, i + 1, len(settings),
                 sweep.label(overrides))
    row = {"mode": mode, "setting": sweep.label(overrides), "overrides": overrides,
           **_describe(setting)}
    module = (backbone if mode in backbone.MODES else
              video_mode if mode in video_mode.MODES else measure)
    row.update(module.measure(setting, mode))
    result = None
    if setting.baseline == "torch" and mode in baseline.BASELINE_MODES:
      result = baselines(setting, mode, baseline.compared_devices(row))
      baseline.attach(row, result, setting, mode)
    else:
      row.update(baseline=None, baseline_variant=None, baseline_frames_per_second=None,
                 speedup_vs_baseline=None)
    row.update(common, versions=_versions(result))
    rows.append(row)
    logging.info("%s", report.summary(row))
    if json_path:
      report.write_json(rows, json_path)
    gc.collect()  # Drop the last setting's device buffers before the next is compiled.
  if output:
    report.write_all(rows, output)
  return rows
