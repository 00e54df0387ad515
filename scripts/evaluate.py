"""Evaluates a training run (or a converted checkpoint) on a split.

  python scripts/evaluate.py --config=configs/fpha.py --workdir=runs/fpha --split=test \
      --config.dataset.data_dir=/data/fpha_tfrecords

Reads <workdir>/checkpoints (or --checkpoint_dir), writes <workdir>/eval/<split>/metrics.json,
PCK curves (.npz with x in cm and y, and .png) and predictions.npz. With --h2o_export, also the
H2O challenge submissions in <workdir>/eval/<split>/h2o/ (htt_jax/h2o_export.py):

  python scripts/evaluate.py --config=configs/h2o.py --workdir=runs/h2o --split=test \
      --config.dataset.data_dir=/data/h2o_tfr --h2o_export --h2o_raw_dir=/data/h2o

--workdir, --checkpoint_dir and dataset.data_dir may be gs:// URLs (docs/launch.md, "Cloud
Storage"); --h2o_raw_dir is a local folder.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from htt_jax import cli, config_lib, h2o_export, storage

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/ inside; eval/ written here).")
flags.DEFINE_string("checkpoint_dir", None, "Checkpoint directory; default <workdir>/checkpoints.")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_bool("h2o_export", False, "Also write the H2O challenge submissions (action labels; "
                  "hand poses with --h2o_raw_dir) to <workdir>/eval/<split>/h2o/.")
flags.DEFINE_string("h2o_raw_dir", None, "Raw H2O folder: its action_labels/action_<split>.txt "
                    "names each frame of the hand pose submission.")
flags.DEFINE_string("h2o_modality", "RGB", "The action submission's 'modality' entry.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # A mistake in the config or the flags stops the run here, before JAX starts.
  config_lib.validate_config(FLAGS.config)
  cli.require_data_dir(FLAGS.config)
  # The split names a manifest and the folder eval/<split>/: a name, as config.eval_split.
  if not config_lib.is_split_name(FLAGS.split):
    raise config_lib.ConfigError(f"--split={FLAGS.split!r} must be a split name such as 'test' "
                                 "or 'val' (letters, digits, _)")
  if FLAGS.h2o_raw_dir and storage.is_url(FLAGS.h2o_raw_dir):  # data_pipeline.h2o reads local files
    raise app.UsageError(f"--h2o_raw_dir={FLAGS.h2o_raw_dir} must be a local folder (only its "
                         "action_labels/action_<split>.txt is read: copy that file to local "
                         "disk); --workdir may be a gs:// URL")
  if FLAGS.h2o_export:
    h2o_export.check_config(FLAGS.config, FLAGS.h2o_raw_dir, FLAGS.split)
  from htt_jax import cpu_flags  # pylint: disable=g-import-not-at-top
  cpu_flags.configure([FLAGS.config])  # before JAX starts
  import jax  # pylint: disable=g-import-not-at-top
  from htt_jax import evaluate  # pylint: disable=g-import-not-at-top
  checkpoint_dir = FLAGS.checkpoint_dir or os.path.join(FLAGS.workdir, "checkpoints")
  output_dir = os.path.join(FLAGS.workdir, "eval", FLAGS.split)
  report = evaluate.evaluate(FLAGS.config, checkpoint_dir, output_dir, FLAGS.split, FLAGS.step)
  print(json.dumps(report, indent=2, sort_keys=True))
  if FLAGS.h2o_export and jax.process_index() == 0:  # predictions.npz is written by process 0.
    written = h2o_export.export(os.path.join(output_dir, "predictions.npz"),
                                os.path.join(output_dir, "h2o"), FLAGS.h2o_raw_dir, FLAGS.split,
                                FLAGS.h2o_modality)
    print("\n".join(f"wrote {path}" for path in sorted(written.values())))


if __name__ == "__main__":
  cli.run(main)
