"""Kill-and-resume trials of scripts/train.py, compared with an uninterrupted run (docs/faults.md).

  python scripts/fault_campaign.py --trials=10 --seed=0 --workdir=runs/faults

Prints one table row per trial (moment, step killed at, what the kill left, step resumed from,
max abs param diff, metrics ok, pass) and exits with status 1 when any trial fails.
"""

import sys
import time

from absl import flags

from htt_jax import cli

flags.DEFINE_integer("trials", 10, "Number of kill-and-resume trials.")
flags.DEFINE_integer("seed", 0, "Seed of the trials' steps and kill times.")
flags.DEFINE_string("workdir", "runs/faults", "Folder of the data, the runs and their logs.")
flags.DEFINE_integer("steps", 10, "Training steps of each run.")
flags.DEFINE_integer("checkpoint_every", 2, "Checkpoint every this many steps.")
flags.DEFINE_list("moments", None, "Moments to cycle through (default: all; see docs/faults.md).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from htt_jax import fault_campaign  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  trials = fault_campaign.run_campaign(
      FLAGS.workdir, FLAGS.trials, FLAGS.seed, FLAGS.steps, FLAGS.checkpoint_every,
      moments=tuple(FLAGS.moments or fault_campaign.MOMENTS))
  print(fault_campaign.table(trials))
  passed = sum(t.passed for t in trials)
  print(f"{passed} of {len(trials)} trials passed in {time.perf_counter() - start:.0f} s")
  if passed < len(trials):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
