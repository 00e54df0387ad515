"""Converts an HTT checkpoint of the authors' PyTorch code (`.pth`) into an Orbax checkpoint.

  python scripts/convert_torch_checkpoint.py \
      --torch_checkpoint=ws/ckpts/htt_fpha/checkpoint_45.pth \
      --config=configs/fpha.py --output_dir=runs/fpha_reference/checkpoints

The config fixes the heads (joints, objects, actions) the weights must fit; the result is used by
`scripts/evaluate.py` and `scripts/predict.py` with the same config. The file is read without
executing pickled code (see htt_jax/import_torch.py); nothing is written unless every weight fits.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from htt_jax import cli, config_lib, cpu_flags, import_torch

config_flags.DEFINE_config_file("config", None, "Model config; its heads must match the file.",
                                lock_config=True)
flags.DEFINE_string("torch_checkpoint", None, "The reference's .pth (or a bare state_dict).")
flags.DEFINE_string("output_dir", None, "New Orbax checkpoint directory; the step is the epoch.")
flags.mark_flags_as_required(["config", "torch_checkpoint", "output_dir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  config_lib.validate_config(config)
  cpu_flags.configure([config])  # before JAX starts (it only traces shapes here: for consistency)
  path = import_torch.convert_reference_checkpoint(FLAGS.torch_checkpoint, config,
                                                   FLAGS.output_dir)
  logging.info("wrote %s", path)
  print(path)


if __name__ == "__main__":
  # Every failure of the conversion is about the file it reads or the folder it writes (a missing
  # or unsafe .pth, weights that do not fit the config, no PyTorch): all reported as one line.
  cli.run(main, user_errors=(ValueError, OSError, ImportError))
