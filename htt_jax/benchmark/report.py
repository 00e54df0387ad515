"""Benchmark outputs: F.json (the rows), F.md (a table) and F.png (throughput vs batch size)."""

import collections
import json
from typing import Any, Dict, List, Sequence, Tuple

from htt_jax import storage


def output_paths(output: str) -> Tuple[str, str, str]:
  """F.json -> (F.json, F.md, F.png); a name without .json gets it."""
  stem = output[:-len(".json")] if output.endswith(".json") else output
  return stem + ".json", stem + ".md", stem + ".png"


def write_json(rows: Sequence[Dict[str, Any]], path: str) -> None:
  storage.write_text(path, json.dumps(list(rows), indent=1) + "\n")


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


_TITLES = {"backbone": "ResNet-18 alone", "conv_layers": "ResNet-18's convolutions alone",
           "video": "predict_video end to end against the forward pass alone"}

# --mode=backbone: ResNet-18 alone, ours and PyTorch's times side by side.
_CELL = dict(_COLUMNS)
_BACKBONE_COLUMNS = (
    ("setting", _CELL["setting"]),
    ("frames", lambda r: str(r["frames"])),
    ("H x W", _CELL["H x W"]),
    ("dtype", _CELL["dtype"]),
    ("forward ms", lambda r: _fmt(r["forward_time_ms_median"])),
    ("forward+backward ms (median / p90)", _CELL["step ms (median / p90)"]),
    ("backward ms", lambda r: _fmt(r["backward_time_ms_median"])),
    ("frames/s", _CELL["frames/s"]),
    ("compile s", _CELL["compile s"]),
    ("TFLOP/s", lambda r: _fmt(r.get("model_tflops_per_second"), 3)),
    ("MFU", _CELL["MFU"]),
    ("PyTorch forward / forward+backward / backward ms",
     lambda r: " / ".join(_fmt((r.get("baseline") or {}).get(f"{part}_time_ms_median"))
                          for part in ("forward", "forward_backward", "backward"))),
    ("ours/baseline", _CELL["ours/baseline"]),
)

_GRADIENTS = ("forward", "dgrad", "wgrad")


# --mode=video (video_mode.py): end to end against the model alone, and where the time went.
_VIDEO_COLUMNS = (
    ("setting", _CELL["setting"]),
    ("clips per batch", lambda r: str(r["video_batch_size"])),
    ("model H x W", _CELL["H x W"]),
    ("video H x W, frames", lambda r: "x".join(map(str, r["video_size"]))
                                      + f", {r['video_frames']}"),
    ("T/t", _CELL["T/t"]),
    ("model alone frames/s", lambda r: _fmt(r["model_frames_per_second"])),
    ("end to end frames/s", lambda r: _fmt(r["frames_per_second"])),
    ("end to end / model", lambda r: _fmt(r["fraction_of_model"], 0, 100) + "%"),
    ("ms/frame decode / model / render", lambda r: " / ".join(
        _fmt(r[f"{s}_ms_per_frame"], 2) for s in ("decode", "model", "render"))),
    ("share of wall decode / model / render", lambda r: " / ".join(
        _fmt(r[f"{s}_share"], 0, 100) + "%" for s in ("decode", "model", "render"))),
)


def _conv_layer_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
  """--mode=conv_layers: a line per convolution (and implementation) of every setting."""
  lines = ["| setting | layer | count | input H x W | channels | kernel/stride | ours | "
           "forward ms | dgrad ms | wgrad ms | PyTorch forward / dgrad / wgrad ms |",
           "|" + "---|" * 11]
  for row in rows:
    theirs = {layer["layer"]: layer for layer in (row.get("baseline") or {}).get("layers", ())}
    for layer in row["layers"]:
      torch_ms = theirs.get(layer["layer"], {})
      lines.append("| " + " | ".join([
          row["setting"], layer["layer"], str(layer["count"]),
          "x".join(map(str, layer["input_size"])),
          f"{layer['in_channels']}->{layer['out_channels']}",
          f"{layer['kernel']}/{layer['stride']}", layer["implementation"],
          *(_fmt(layer[f"{g}_ms_median"], 2) for g in _GRADIENTS),
          " / ".join(_fmt(torch_ms.get(f"{g}_ms_median"), 2) for g in _GRADIENTS)]) + " |")
  return lines


def summary(row: Dict[str, Any]) -> str:
  """What scripts/benchmark.py prints for a measured row (several lines for conv_layers)."""
  if row["mode"] == "conv_layers":
    theirs = {layer["layer"]: layer for layer in (row.get("baseline") or {}).get("layers", ())}
    lines = [f"{row['setting']}: {row['frames']} frames, ms per call (forward, dgrad, wgrad)"]
    for layer in row["layers"]:
      times = lambda entry: ", ".join(_fmt(entry.get(f"{g}_ms_median"), 2) for g in _GRADIENTS)
      text = f"  {layer['layer']:14s} x{layer['count']} {layer['implementation']:8s} {times(layer)}"
      if layer["layer"] in theirs and layer["implementation"] == "lax":
        text += f"; PyTorch {times(theirs[layer['layer']])}"
      lines.append(text)
    return "\n".join(lines)
  text = (f"{row['setting']}: {row['frames_per_second']:.1f} frames/s, median step "
          f"{row['step_time_ms_median']:.1f} ms")
  if row["mode"] == "backbone":
    text += (f" (forward {row['forward_time_ms_median']:.1f} ms, backward "
             f"{row['backward_time_ms_median']:.1f} ms)")
  if row["mode"] == "video":
    text += (f" (model alone {row['model_frames_per_second']:.1f} frames/s: "
             f"{100 * row['fraction_of_model']:.0f}%; busy ms/frame decode "
             f"{row['decode_ms_per_frame']:.2f}, model {row['model_ms_per_frame']:.2f}, render "
             f"{row['render_ms_per_frame']:.2f})")
  if row.get("speedup_vs_baseline"):
    text += f", {row['speedup_vs_baseline']:.2f}x the PyTorch baseline"
  return text


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
  """A table of the rows, under a header naming the machine, versions, commit and date."""
  lines = []
  mode = rows[0]["mode"] if rows else "train"
  if rows:
    first = rows[0]
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items() if v)
    lines += [f"# {_TITLES.get(mode, 'HTT throughput')}: {first['device_kind']} ({first['platform']}), "
              f"{first['cpu_threads']} CPU threads"
              + (f" ({first['host_cpu']})" if first.get("host_cpu") else ""), "",
              f"{first['timestamp']}; commit {first['git_commit'] or 'unknown'}; {versions}.",
              f"Timing: {first['warmup_steps']} warm-up steps, then the median and 90th "
              "percentile of the timed steps; throughput from the median step.", ""]
  if mode == "conv_layers":
    return "\n".join(lines + _conv_layer_table(rows)) + "\n"
  columns = {"backbone": _BACKBONE_COLUMNS, "video": _VIDEO_COLUMNS}.get(mode, _COLUMNS)
  lines.append("| " + " | ".join(name for name, _ in columns) + " |")
  lines.append("|" + "---|" * len(columns))
  for row in rows:
    lines.append("| " + " | ".join(cell(row) for _, cell in columns) + " |")
  if mode not in ("backbone", "video") and any(row["platform"] == "gpu" for row in rows):
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


def _plot_conv_layers(rows: Sequence[Dict[str, Any]], ax) -> None:
  """Each convolution's share of a training step: count x (forward + dgrad + wgrad), as bars
  (the stem's dgrad left out: the images need no gradient)."""
  bars = collections.defaultdict(dict)  # implementation -> {label: ms}
  for row in rows:
    prefix = f"{row['setting']}: " if len(rows) > 1 else ""
    entries = [dict(e, implementation=f"ours ({e['implementation']})") for e in row["layers"]]
    counts = {e["layer"]: e["count"] for e in row["layers"]}
    entries += [dict(e, implementation="PyTorch")
                for e in (row.get("baseline") or {}).get("layers", ())]
    for entry in entries:
      needed = _GRADIENTS if entry["layer"] != "stem" else ("forward", "wgrad")
      bars[entry["implementation"]][prefix + entry["layer"]] = counts[entry["layer"]] * sum(
          entry[f"{g}_ms_median"] for g in needed)
  labels = list(dict.fromkeys(label for series in bars.values() for label in series))
  height = 0.8 / max(1, len(bars))
  for i, (name, series) in enumerate(bars.items()):
    ys = [j + i * height for j, label in enumerate(labels) if label in series]
    ax.barh(ys, [series[label] for label in labels if label in series], height, label=name)
  ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels, fontsize=7)
  ax.invert_yaxis()
  ax.set_xlabel("ms per training step: count x (forward + dgrad + wgrad)")


def _plot_throughput(rows: Sequence[Dict[str, Any]], ax) -> None:
  series = collections.defaultdict(list)
  for row in rows:
    series[_series_name(row)].append(row)
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
    ax.set_xticks(sorted({r["batch_size"] for r in rows}))
  ax.set_ylim(bottom=0)


def plot(rows: Sequence[Dict[str, Any]], path: str) -> None:
  """Frames/s (all devices) against batch size, one line per other setting; baselines dashed.
  For --mode=conv_layers, each convolution's time as bars, ours and PyTorch's."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  mode = rows[0]["mode"] if rows else "train"
  fig, ax = plt.subplots(figsize=(7, 5 if mode == "conv_layers" else 4.5))
  (_plot_conv_layers if mode == "conv_layers" else _plot_throughput)(rows, ax)
  if rows:
    ax.set_title(f"{_TITLES.get(mode, 'HTT throughput')} on {rows[0]['device_kind']}", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  storage.save_figure(path, fig, dpi=100)
  plt.close(fig)


def write_all(rows: List[Dict[str, Any]], output: str) -> Tuple[str, str, str]:
  """Writes F.json, F.md and F.png; returns their paths."""
  json_path, md_path, png_path = output_paths(output)
  write_json(rows, json_path)
  storage.write_text(md_path, markdown(rows))
  plot(rows, png_path)
  return json_path, md_path, png_path
