"""Evaluates a training run (or a converted checkpoint) on a split.

  python scripts/evaluate.py --config=configs/fpha.py --workdir=runs/fpha --split=test \
      --config.dataset.data_dir=/data/fpha_tfrecords

Reads <workdir>/checkpoints (or --checkpoint_dir), writes <workdir>/eval/<split>/metrics.json,
PCK curves (.npz with x in cm and y, and .png) and predictions.npz.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/ inside; eval/ written here).")
flags.DEFINE_string("checkpoint_dir", None, "Checkpoint directory; default <workdir>/checkpoints.")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from htt_jax import evaluate  # pylint: disable=g-import-not-at-top
  checkpoint_dir = FLAGS.checkpoint_dir or os.path.join(FLAGS.workdir, "checkpoints")
  output_dir = os.path.join(FLAGS.workdir, "eval", FLAGS.split)
  report = evaluate.evaluate(FLAGS.config, checkpoint_dir, output_dir, FLAGS.split, FLAGS.step)
  print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
