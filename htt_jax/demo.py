"""The demo on the embedded default: make the synthetic dataset, train HTT, evaluate on held-out
synthetic subjects, print a metrics table (the job behind `make demo`)."""

import os

from absl import logging

from htt_jax import evaluate, input_pipeline, train

def prepare_data(config) -> None:
  """Generates the synthetic TFRecords unless every split's manifest is already there.

  `config.demo_data` (configs/synthetic.py) holds the data_pipeline.synthetic.SyntheticConfig
  fields (seed, videos and subjects per split, ...); the image size, T and t come from the rest of
  the config.
  """
  from data_pipeline import synthetic, writer  # pylint: disable=g-import-not-at-top
  data_dir = config.dataset.data_dir
  fields = {k: dict(v) if hasattr(v, "keys") else v for k, v in config.demo_data.items()}
  source = synthetic.SyntheticConfig(image_size=tuple(config.dataset.image_size), **fields)
  vocabulary = synthetic.load_vocabulary(source)
  for split in synthetic.SPLITS:
    if os.path.exists(input_pipeline.manifest_path(data_dir, split)):
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


def run_demo(config, workdir: str) -> dict:
  prepare_data(config)
  train.train_and_evaluate(config, workdir)
  output_dir = os.path.join(workdir, "eval", "test")
  report = evaluate.evaluate(config, os.path.join(workdir, "checkpoints"), output_dir, "test")
  table = format_table(report, config.model.num_actions)
  logging.info("demo metrics:\n%s", table)
  print(f"\nheld-out synthetic subjects ({report['num_videos']} videos):\n{table}\n"
        f"metrics: {os.path.join(output_dir, 'metrics.json')}; PCK curves: {output_dir}/*.png")
  return report
