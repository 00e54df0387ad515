"""The demo on the embedded default (the job behind `make demo`): make the synthetic dataset,
train HTT (which evaluates on the held-out synthetic subjects at the end), print the metrics
table, render the predictions on a held-out video, and print the times and the CPU."""

import dataclasses
import json
import os
import time
from typing import Optional

from absl import logging

from htt_jax import config_lib, storage, train
from htt_jax import machine


# Beside the manifests: the SyntheticConfig the data was rendered with. The demo reuses data it
# finds, so data of other settings (another `config.demo_data`, an earlier default) must be
# refused, not trained and evaluated on as if it were the settings asked for.
DATA_RECORD = "demo_data.json"


def _settings(source) -> dict:
  """The SyntheticConfig's fields as JSON gives them back (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(source), sort_keys=True))


def _check_rendered_with(data_dir: str, wanted: dict, splits) -> bool:
  """True when data_dir already holds data rendered with `wanted`; False when it holds none; a
  ConfigError (naming each differing config.demo_data field) for anything else."""
  from data_pipeline import schema  # pylint: disable=g-import-not-at-top
  record = os.path.join(data_dir, DATA_RECORD)
  advice = f"remove {data_dir} to render it again, or use another --workdir"
  if storage.exists(record):
    try:
      found = json.loads(storage.read_text(record))
    except ValueError as e:
      raise config_lib.ConfigError(f"{record} is not JSON ({e}); {advice}") from e
    # image_size is the SyntheticConfig's field that config.dataset sets; the rest are demo_data's.
    key = lambda k: "config.dataset.image_size" if k == "image_size" else f"config.demo_data.{k}"
    differ = [f"{key(k)}={wanted.get(k)!r} now, {found.get(k)!r} there"
              for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)]
    if differ:
      raise config_lib.ConfigError(f"{data_dir} holds synthetic data rendered with other "
                                   f"settings: {'; '.join(differ)}; {advice}")
    return True
  if any(storage.exists(schema.manifest_path(data_dir, split)) for split in splits):
    raise config_lib.ConfigError(
        f"{data_dir} holds synthetic data but no {DATA_RECORD} (rendered before 2026-12-06, "
        f"when the demo's videos became 24-32 frames long), so its settings are unknown; {advice}")
  return False


def prepare_data(config) -> None:
  """Generates the synthetic TFRecords unless every split's manifest is already there.

  `config.demo_data` (configs/synthetic.py) holds the data_pipeline.synthetic.SyntheticConfig
  fields (seed, videos and subjects per split, ...); the image size, T and t come from the rest of
  the config. Data found in the folder is used only if DATA_RECORD says it was rendered with the
  same fields.
  """
  from data_pipeline import schema, synthetic, writer  # pylint: disable=g-import-not-at-top
  data_dir = config.dataset.data_dir
  source = synthetic.from_fields(config.demo_data, image_size=tuple(config.dataset.image_size))
  wanted = _settings(source)
  if not _check_rendered_with(data_dir, wanted, synthetic.SPLITS):
    storage.write_json(os.path.join(data_dir, DATA_RECORD), wanted)  # before any split
  vocabulary = synthetic.load_vocabulary(source)
  for split in synthetic.SPLITS:
    if storage.exists(schema.manifest_path(data_dir, split)):
      continue
    writer.prepare_split(synthetic.iter_videos(source, split), data_dir, split,
                         num_frames=config.model.num_frames, window=config.model.window,
                         spacing=config.dataset.spacing, vocabulary=vocabulary,
                         dataset_name="synthetic", image_size=tuple(config.dataset.image_size),
                         num_workers=1)


def format_table(report: dict, num_actions: int) -> str:
  rows = [("action accuracy (videos, soft vote)", f"{report['action_accuracy']:.3f}",
           f"chance {1 / num_actions:.3f}"),
          ("object accuracy (frames)", f"{report['object_accuracy']:.3f}", ""),
          ("hand MEPE (mm)", f"{report['mepe_mm']:.1f}",
           f"training-mean pose {report['baseline_mean_pose_mepe_mm']:.1f}"),
          ("hand MEPE root-aligned (mm)", f"{report['mepe_ra_mm']:.1f}",
           f"training-mean pose {report['baseline_mean_pose_mepe_ra_mm']:.1f}"),
          ("AUC 0-80 mm / RA 0-50 mm", f"{report['auc']:.3f} / {report['auc_ra']:.3f}", "")]
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"{name:<{width}}  {value:>13}  {note}" for name, value, note in rows)


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def timing_line(started: float, phases, cpu: str) -> str:
  """'demo: 7 min 8 s in all (data 4 s, ...) on AMD EPYC (Zen 5, ...), AVX-512, 2 CPUs': the
  wall time since `started` (time.perf_counter()) and each (name, seconds) phase, with the
  machine, as docs/demo.md reports the demo's time."""
  parts = ", ".join(f"{name} {_duration(seconds)}" for name, seconds in phases)
  return (f"demo: {_duration(time.perf_counter() - started)} in all ({parts}) on {cpu}; "
          "the target is 10 minutes on 2 CPUs (docs/demo.md)")


def run_demo(config, workdir: str, started: Optional[float] = None) -> dict:
  """Data, then training that evaluates `config.eval_split` at its end, then the table, once;
  last, the held-out video and the time taken since `started` (the script's start; default now)."""
  if not config.get("eval_split", ""):
    raise config_lib.ConfigError("the demo reports the evaluation after training: set "
                                 "config.eval_split (configs/synthetic.py: 'test')")
  started = time.perf_counter() if started is None else started
  phases, mark = [], time.perf_counter()
  phases.append(("start-up", mark - started))
  prepare_data(config)
  phases.append(("data", time.perf_counter() - mark))
  mark = time.perf_counter()
  report = train.train_and_evaluate(config, workdir).get("eval")
  phases.append(("training and evaluation", time.perf_counter() - mark))
  if report is None:  # Stopped early (SIGTERM): the checkpoint is saved, nothing was evaluated.
    logging.warning("training stopped before its last step: no evaluation")
    return {}
  output_dir = os.path.join(workdir, "eval", config.eval_split)
  table = format_table(report, config.model.num_actions)
  print(f"\nheld-out synthetic subjects ({report['num_videos']} videos):\n{table}\n"
        f"metrics: {os.path.join(output_dir, 'metrics.json')}; PCK curves: {output_dir}/*.png")
  # The model at work on one held-out video: overlay.mp4 and the figures (htt_jax/demo_video.py).
  from htt_jax import demo_video  # pylint: disable=g-import-not-at-top
  mark = time.perf_counter()
  video_summary = demo_video.render_held_out_video(config, workdir)
  print(demo_video.describe(video_summary, os.path.join(workdir, "video")))
  phases.append(("held-out video", time.perf_counter() - mark))
  print(timing_line(started, phases, machine.cpu_summary()))
  return report
