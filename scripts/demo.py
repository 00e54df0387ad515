"""`make demo`: synthetic data -> train -> evaluate on held-out subjects -> metrics table.

  python scripts/demo.py --workdir=runs/demo [--config=configs/synthetic.py] [--config.k=v ...]
"""

import os
import time

_STARTED = time.perf_counter()  # The demo's time is reported from here (htt_jax/demo.py).

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags

from htt_jax import cli, config_lib

config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py"),
    "Config file.", lock_config=True)
flags.DEFINE_string("workdir", "runs/demo", "Run folder (data/, checkpoints/, eval/).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  config_lib.validate_config(config)  # before the library (and TensorFlow) load
  from htt_jax import cpu_flags  # pylint: disable=g-import-not-at-top
  cpu_flags.configure([config])  # before JAX (and TensorFlow) start
  from htt_jax import demo  # pylint: disable=g-import-not-at-top
  if config.dataset.data_dir == "runs/demo/data":
    with config.unlocked():
      config.dataset.data_dir = os.path.join(FLAGS.workdir, "data")
  demo.run_demo(config, FLAGS.workdir, started=_STARTED)


if __name__ == "__main__":
  cli.run(main)
