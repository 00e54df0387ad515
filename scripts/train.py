"""Trains HTT; resumes from the latest checkpoint in --workdir/checkpoints.

A rerun whose config would change the run it resumes (model sizes, T, t, data, batch size,
optimiser, ...) stops with one `error:` line naming each key and both values, before anything is
compiled or written; `--config.resume_allow_changes=KEY,...` continues on purpose, and
`--config.init.checkpoint=DIR` in a new workdir starts a new run from DIR's weights.

  python scripts/train.py --config=configs/fpha.py --workdir=runs/fpha \
      --config.dataset.data_dir=/data/fpha_tfrecords --config.batch_size=8

--workdir may be a gs:// URL (docs/launch.md); it is checked for writing (a missing bucket, no
credentials, no permission: one `error:` line naming it) before anything is compiled.

Multi-host (`_start_distributed`): on a Cloud TPU VM, under SLURM, or with JAX_COORDINATOR_ADDRESS
set, jax.distributed starts from the environment; elsewhere pass --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on every process. --distributed=off never starts it.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from htt_jax import cli, config_lib, resume, storage

config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and TensorBoard files go.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host by hand).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host by hand).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host by hand).")
flags.DEFINE_enum("distributed", "auto", ["auto", "off"],
                  "auto: start jax.distributed on a Cloud TPU VM, under SLURM, with "
                  "JAX_COORDINATOR_ADDRESS set or with the flags above; off: one process alone.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM: `import jax` has found libtpu and TPU chips on this machine's PCI bus
  (jax/_src/cloud_tpu_init.py, which sets this flag without starting a backend). Not a public API:
  a JAX that moves it reads as False here, and the environment variables still apply. Call
  after `import jax`."""
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _start_distributed():
  """jax.distributed.initialize, before any JAX computation, where JAX documents that it finds its
  arguments itself: Cloud TPU (every worker of a slice, one worker alone too: a process count of
  1), SLURM, or JAX_COORDINATOR_ADDRESS (the process count and index then come from the cluster's
  detection). Never on a machine without any of these (a CPU or single-GPU machine): there
  initialize() has no coordinator and raises."""
  import jax  # pylint: disable=g-import-not-at-top
  by_hand = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in by_hand):
    if any(v is None for v in by_hand):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id go together")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed == "off":
    pass
  elif (any(k in os.environ
            for k in ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "JAX_COORDINATOR_ADDRESS"))
        or _on_cloud_tpu_vm()):
    jax.distributed.initialize()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  del argv
  # A mistake in the config stops the run here, before JAX starts.
  config_lib.validate_config(FLAGS.config)
  resume.allowed_changes(FLAGS.config)
  cli.require_data_dir(FLAGS.config)
  # A workdir that cannot be written (missing bucket, credentials, permission) stops the run now,
  # before JAX starts; a local one is created (a URL needs no folders: storage.makedirs).
  storage.check_writable(FLAGS.workdir)
  from htt_jax import cpu_flags  # pylint: disable=g-import-not-at-top
  cpu_flags.configure([FLAGS.config])  # before JAX starts
  _start_distributed()
  from htt_jax import train  # pylint: disable=g-import-not-at-top  (after distributed init)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main, user_errors=(FloatingPointError,))  # train.NonFiniteLossError: a diverged run
