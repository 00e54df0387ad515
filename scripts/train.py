"""Trains HTT; resumes from the latest checkpoint in --workdir/checkpoints.

A rerun whose config would change the run it resumes (model sizes, T, t, data, batch size,
optimiser, ...) stops with one `error:` line naming each key and both values, before anything is
compiled or written; `--config.resume_allow_changes=KEY,...` continues on purpose, and
`--config.init.checkpoint=DIR` in a new workdir starts a new run from DIR's weights.

  python scripts/train.py --config=configs/fpha.py --workdir=runs/fpha \
      --config.dataset.data_dir=/data/fpha_tfrecords --config.batch_size=8

Multi-host: on Cloud TPU and SLURM jax.distributed starts from the environment; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I on every process.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from htt_jax import cli, config_lib, resume

config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and TensorBoard files go.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host by hand).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host by hand).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host by hand).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _start_distributed():
  import jax  # pylint: disable=g-import-not-at-top
  by_hand = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in by_hand):
    if any(v is None for v in by_hand):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif any(k in os.environ
           for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "JAX_COORDINATOR_ADDRESS")):
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  del argv
  # A mistake in the config stops the run here, before JAX starts.
  config_lib.validate_config(FLAGS.config)
  resume.allowed_changes(FLAGS.config)
  cli.require_data_dir(FLAGS.config)
  from htt_jax import cpu_flags  # pylint: disable=g-import-not-at-top
  cpu_flags.configure([FLAGS.config])  # before JAX starts
  _start_distributed()
  from htt_jax import train  # pylint: disable=g-import-not-at-top  (after distributed init)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
