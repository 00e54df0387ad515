"""The processes of the multi-host tests (test_multihost.py), on CPU devices only.

  python multihost_worker.py --mode=reference --data_dir=D --workdir=W --result=R.json
  python multihost_worker.py --mode=process --num_processes=2 --process_id=I --port=P \
      --data_dir=D --workdir=W --result=R.json [--files_steps=N]

Each trains with `train.train_and_evaluate` (the real loop) and records, step by step, the
clips it fed: `W/batch` with host_sharding='batch' for --steps steps; in 'process' mode `W/pmap`,
the same with config.parallelism='pmap', after which process 0 alone predicts 3 clips from its
checkpoint with `inference.Predictor` under pmap and under jit; then `W/files` with
host_sharding='files'.
'process': one of N processes (jax.distributed over localhost, gloo CPU collectives), 2 CPU
  devices each; the 'files' run lasts --files_steps steps unless a SIGTERM stops it earlier.
'reference': one process with 4 devices and the global batches of a 2-process run: for 'batch'
  that is the contract (the global batch does not depend on the process count); for 'files' it
  is fed at every step the concatenation of what processes 0 and 1 of 2 read (process 0's rows
  first, as its devices come first in the mesh).
"""

import argparse
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The smoke model on T = t = 8 clips (cheap), 4 clips per step over 4 devices, tf.data held to one
# thread. test_multihost.py passes the same values to scripts/train.py as --config.k=v flags.
OVERRIDES = {
    "model.num_frames": 8, "model.window": 8, "batch_size": 4, "eval_batch_size": 4,
    "log_every_steps": 1, "checkpoint_every_steps": 1000, "dataset.num_parallel_calls": 1,
    "dataset.prefetch": 1, "dataset.shuffle_buffer": 8, "dataset.cycle_length": 2,
    # A run that completes then evaluates the (only) split: evaluation across processes too.
    "eval_split": "train",
}
NUM_FRAMES = OVERRIDES["model.num_frames"]


def smoke_config(data_dir: str, steps: int, host_sharding: str):
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("smoke")
  for key, value in OVERRIDES.items():
    node, name = config, key
    while "." in name:
      head, name = name.split(".", 1)
      node = node[head]
    node[name] = value
  config.dataset.data_dir = data_dir
  config.num_train_steps = steps
  config.dataset.host_sharding = host_sharding
  return config


def _recording(batches, seen):
  """Passes batches through, noting which clips (video index, first raw frame) each holds."""
  for batch in batches:
    seen.append([[int(v), int(s)] for v, s in zip(batch["video_index"], batch["start_frame"])])
    yield batch


def _predict_both_ways(config, variables) -> float:
  """Max |difference| of every output of 3 clips of the first batch, pmap against jit (variables
  replicated over both processes' devices, as restored)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from htt_jax import inference, input_pipeline  # pylint: disable=g-import-not-at-top
  batch = next(input_pipeline.eval_batches(config, "train", process_index=0, process_count=1))
  frames = config.model.num_frames
  clips = {k: np.asarray(batch[k][:3]).reshape((-1,) + batch[k].shape[2:])
           for k in ("image", "intrinsics", "not_padding")}
  clips["images"] = clips.pop("image")
  outputs = {}
  for parallelism in ("pmap", "jit"):
    config.parallelism = parallelism
    outputs[parallelism] = inference.Predictor(config, variables).predict(clips)
  assert outputs["jit"]["joints3d"].shape[0] == 3 * frames
  return max(float(np.abs(outputs["pmap"][k] - outputs["jit"][k]).max()) for k in outputs["jit"])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=("reference", "process"), required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--result", required=True)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--files_steps", type=int, default=2)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", 4 // args.num_processes)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # The default; said for clarity.
  if args.mode == "process":
    jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id)
  assert jax.device_count() == 4
  import numpy as np  # pylint: disable=g-import-not-at-top
  from htt_jax import input_pipeline, train  # pylint: disable=g-import-not-at-top
  real_batches = input_pipeline.train_batches

  def run(config, workdir, batches_fn):
    seen = []
    input_pipeline.train_batches = lambda *a, **k: _recording(batches_fn(*a, **k), seen)
    try:
      last = train.train_and_evaluate(config, workdir)
    finally:
      input_pipeline.train_batches = real_batches
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_device_count": jax.local_device_count(), "last": last, "clips": seen}

  def two_process_files_batches(config, start_step=0, **kwargs):
    shares = [real_batches(config, start_step, process_index=p, process_count=2, **kwargs)
              for p in range(2)]
    for parts in zip(*shares):
      yield {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

  files_batches = two_process_files_batches if args.mode == "reference" else real_batches
  result = {"batch": run(smoke_config(args.data_dir, args.steps, "batch"),
                         os.path.join(args.workdir, "batch"), real_batches)}
  if args.mode == "process":  # Before 'files', which a SIGTERM stops.
    config = smoke_config(args.data_dir, args.steps, "batch")
    config.parallelism = "pmap"
    result["pmap"] = run(config, os.path.join(args.workdir, "pmap"), real_batches)
    # Every process restores (Orbax's restore is collective); prediction is local: process 1
    # takes no part in it.
    from htt_jax import checkpointing  # pylint: disable=g-import-not-at-top
    variables, _ = checkpointing.restore_variables(
        os.path.join(args.workdir, "pmap", "checkpoints"), config=config)
    if jax.process_index() == 0:
      result["pmap"]["predictor_max_diff"] = _predict_both_ways(config, variables)
  result["files"] = run(smoke_config(args.data_dir, args.files_steps, "files"),
                        os.path.join(args.workdir, "files"), files_batches)
  with open(args.result, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
