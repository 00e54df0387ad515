"""Throughput benchmark: the full HTT (FPHA heads, d = 512) on random or TFRecord batches.

Default: the CPU comparison setting (H, W, B, T, t) = (96, 160, 2, 32, 16), float32, jit, every
device; 2 warm-up steps, then 5 timed steps.

  python scripts/benchmark.py --config=configs/benchmark.py --mode=train \
      --output=runs/bench/train.json
  python scripts/benchmark.py --config=configs/benchmark.py --mode=eval \
      --output=runs/bench/eval.json --config.baseline=torch
  python scripts/benchmark.py --config=configs/benchmark.py --mode=train \
      --output=runs/bench/sweep.json \
      --config.sweep='batch_size=1,2,4;dtype=float32,bfloat16;parallelism=jit,pmap'
  python scripts/benchmark.py --config=configs/benchmark.py --mode=backbone \
      --output=runs/bench/backbone.json --config.baseline=torch --config.cpu_threads=2
  python scripts/benchmark.py --config=configs/benchmark.py --mode=end_to_end \
      --output=runs/bench/e2e.json --config.dataset.data_dir=/data/fpha_tfr_96x160_T32
      # data made by: scripts/prepare_data.py ... --image_size=96,160 --num_frames=32

Sweep keys are any config keys, e.g. batch_size, dataset.image_size, model.num_frames,
model.window, dtype, parallelism, model.remat, num_devices. Small local variant (a quick check of
the command, 1 + 3 steps at 72x128, B = 1, T = 16): --config=configs/benchmark.py:runlocal
"""

from htt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_variant(arg, ('runlocal',), "configs/benchmark.py")
  config = config_lib.base_config()
  config.dataset.name = "fpha"
  config.model.num_joints, config.model.num_objects, config.model.num_actions = (
      config_lib.DATASET_HEADS["fpha"])
  config.dataset.image_size = (96, 160)
  config.batch_size = 2
  config.model.num_frames = 32
  config.model.window = 16
  config.dtype = "float32"
  # tf.data shares the host's cores with XLA (docs/architecture.md): bounded threads, a short
  # prefetch.
  config.dataset.num_parallel_calls = 2
  config.dataset.prefetch = 2

  config.num_devices = 0  # The first N devices; 0: all of them.
  config.warmup_steps = 2
  config.timed_steps = 5
  config.sweep = ""  # e.g. "batch_size=1,2,4;dataset.image_size=(96,160),(270,480)"
  config.baseline = "none"  # 'none' | 'torch' (the PyTorch reference, in a subprocess).
  config.cpu_threads = 0  # 0: every CPU of the process; N: pin this process (and PyTorch) to N.
  if arg == "runlocal":
    config.dataset.image_size = (72, 128)
    config.batch_size = 1
    config.model.num_frames = 16
    config.warmup_steps = 1
    # 3: the median then survives one disturbed step (of 2 it is their mean). Still a quick
    # check of the command, not a measurement: the default's 5 timed steps are.
    config.timed_steps = 3
  return config
