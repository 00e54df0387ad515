"""Runs a trained (or converted) HTT on clips stored in an .npz file.

  python scripts/predict.py --config=configs/fpha.py --checkpoint_dir=runs/fpha/checkpoints \
      --clips=clips.npz --output=predictions.npz

Any of the three paths may be a gs:// URL (docs/launch.md, "Cloud Storage").

The input and output keys are described in htt_jax/inference.py and docs/evaluation.md.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from htt_jax import cli, config_lib, cpu_flags, inference, storage

config_flags.DEFINE_config_file("config", None, "Model config file.", lock_config=True)
flags.DEFINE_string("checkpoint_dir", None, "Orbax checkpoint directory (training or converted).")
flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
flags.DEFINE_string("clips", None, "Input .npz (images, intrinsics, not_padding[, labels]).")
flags.DEFINE_string("output", None, "Output .npz, written atomically.")
flags.mark_flags_as_required(["config", "checkpoint_dir", "clips", "output"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  config_lib.validate_config(config)
  cpu_flags.configure([config])  # before JAX starts
  clips = inference.load_clips(FLAGS.clips, f"--clips={FLAGS.clips}")
  # An output path that is a folder, or a folder or bucket the output cannot go to, stops the run
  # before anything is restored or compiled (a missing local folder is made when writing).
  if storage.isdir(FLAGS.output):
    raise IsADirectoryError(f"--output={FLAGS.output} is a directory: give the path of the .npz "
                            "file to write")
  storage.check_can_create(os.path.dirname(FLAGS.output) or ".")
  # Check the input before restoring weights or compiling anything.
  inference.validate_clips(clips, config, source=FLAGS.clips)
  predictor = inference.Predictor.from_checkpoint(config, FLAGS.checkpoint_dir, FLAGS.step)
  result = predictor.predict(clips, source=FLAGS.clips)
  storage.save_npz(FLAGS.output, result)
  logging.info("wrote %s: %s", FLAGS.output,
               ", ".join(f"{k} {v.shape}" for k, v in sorted(result.items())))
  for key in sorted(k for k in result if k.startswith("loss/")):
    print(f"{key}: {float(result[key]):.6f}")


if __name__ == "__main__":
  cli.run(main)
