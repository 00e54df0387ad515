"""Benchmark outputs: F.json (the rows), F.md (a table) and F.png (throughput vs batch size)."""

import collections
import json
import os
from typing import Any, Dict, List, Sequence, Tuple


def output_paths(output: str) -> Tuple[str, str, str]:
  """F.json -> (F.json, F.md, F.png); a name without .json gets it."""
  stem = output[:-len(".json")] if output.endswith(".json") else output
  return stem + ".json", stem + ".md", stem + ".png"


def _write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(rows: Sequence[Dict[str, Any]], path: str) -> None:
  _write_atomic(path, json.dumps(list(rows), indent=1) + "\n")


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
  if value is None:
    return "-"
  return f"{value * scale:.{digits}f}"


_COLUMNS = (
    ("setting", lambda r: r["setting"]),
    ("mode", lambda r: r["mode"]),
    ("B", lambda r: str(r["batch_size"])),
    ("H x W", lambda r: "x".join(map(str, r["image_size"]))),
    ("T/t", lambda r: f"{r['num_frames']}/{r['window']}"),
    ("dtype", lambda r: r["dtype"]),
    ("parallelism", lambda r: r["parallelism"] + (" +remat" if r["remat"] else "")),
    ("devices", lambda r: str(r["num_devices"])),
    ("step ms (median / p90)", lambda r: f"{_fmt(r['step_time_ms_median'])} / "
                                         f"{_fmt(r['step_time_ms_p90'])}"),
    ("frames/s", lambda r: _fmt(r["frames_per_second"])),
    ("frames/s/device", lambda r: _fmt(r["frames_per_second_per_device"])),
    ("clips/s", lambda r: _fmt(r["clips_per_second"], 2)),
    ("compile s", lambda r: _fmt(r["compile_time_s"])),
    ("peak MiB (XLA)", lambda r: _fmt(r.get("peak_memory_bytes_xla"), 0, 2**-20)),
    ("GFLOP/frame (model / XLA)", lambda r: f"{_fmt(r.get('flops_per_frame_analytic'), 2, 1e-9)}"
                                            f" / {_fmt(r.get('flops_per_frame_xla'), 2, 1e-9)}"),
    ("TFLOP/s/device", lambda r: _fmt(r.get("model_tflops_per_second_per_device"), 3)),
    ("MFU", lambda r: _fmt(r.get("mfu"), 1, 100) + ("%" if r.get("mfu") is not None else "")),
    ("baseline frames/s", lambda r: _fmt(r.get("baseline_frames_per_second"))
                                    + (f" ({r['baseline_variant']})"
                                       if r.get("baseline_variant") else "")),
    ("ours/baseline", lambda r: _fmt(r.get("speedup_vs_baseline"), 2)),
)


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  """A table of the rows, under a header naming the machine, versions, commit and date."""
  lines = []
  if rows:
    first = rows[0]
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items() if v)
    lines += [f"# HTT throughput: {first['device_kind']} ({first['platform']}), "
              f"{first['cpu_threads']} CPU threads", "",
              f"{first['timestamp']}; commit {first['git_commit'] or 'unknown'}; {versions}.",
              f"Timing: {first['warmup_steps']} warm-up steps, then the median and 90th "
              "percentile of the timed steps; throughput from the median step.", ""]
  lines.append("| " + " | ".join(name for name, _ in _COLUMNS) + " |")
  lines.append("|" + "---|" * len(_COLUMNS))
  for row in rows:
    lines.append("| " + " | ".join(cell(row) for _, cell in _COLUMNS) + " |")
  if any(row["platform"] == "gpu" for row in rows):
    # Seen with jax 0.11.2 on an H100: 0.1-0.3 GFLOP/frame against 28 for the model.
    lines += ["", "On GPUs XLA's cost analysis leaves out the convolutions, which run as cuDNN "
              "custom calls, so its FLOP column is far below the model's; TFLOP/s and MFU use "
              "the analytic model count."]
  return "\n".join(lines) + "\n"


def _series_name(row: Dict[str, Any]) -> str:
  """Everything but the batch size that distinguishes a row: one line of the plot per value."""
  parts = {k: v for k, v in row["overrides"].items() if k != "batch_size"}
  parts["mode"] = row["mode"]
  return ", ".join(f"{k}={v}" for k, v in parts.items())


def plot(rows: Sequence[Dict[str, Any]], path: str) -> None:
  """Frames/s (all devices) against batch size, one line per other setting; baselines dashed."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  series = collections.defaultdict(list)
  for row in rows:
    series[_series_name(row)].append(row)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, group in series.items():
    group = sorted(group, key=lambda r: r["batch_size"])
    x = [r["batch_size"] for r in group]
    (line,) = ax.plot(x, [r["frames_per_second"] for r in group], "o-", label=f"ours: {name}")
    # The baseline as measured: one device running batch_size / num_devices clips.
    base = [(r["batch_size"], r["baseline_frames_per_second"]) for r in group
            if r.get("baseline_frames_per_second")]
    if base:
      ax.plot(*zip(*base), "s--", color=line.get_color(),
              label=f"PyTorch, one device: {name}")
  ax.set_xlabel("batch size (clips per step, all devices)")
  ax.set_ylabel("frames / s")
  if rows:
    ax.set_title(f"HTT throughput on {rows[0]['device_kind']}", fontsize=10)
    ax.set_xticks(sorted({r["batch_size"] for r in rows}))
  ax.grid(True, alpha=0.3)
  ax.set_ylim(bottom=0)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_all(rows: List[Dict[str, Any]], output: str) -> Tuple[str, str, str]:
  """Writes F.json, F.md and F.png; returns their paths."""
  json_path, md_path, png_path = output_paths(output)
  write_json(rows, json_path)
  _write_atomic(md_path, markdown(rows))
  plot(rows, png_path)
  return json_path, md_path, png_path
