"""HTT on FPHA on a Cloud TPU pod slice, data and workdir in Cloud Storage (docs/launch.md).

The paper's model, learning rate and epochs (configs/fpha.py) in bfloat16, with a global batch of
4 clips per chip. For a v4-32 slice (4 hosts x 4 chips = 16 devices) that is 64 clips per step, 16
per host: 32x the paper's 2 clips, so 32x fewer Adam updates at the paper's rate of 3e-5. Whether
to scale the rate (e.g. `--config.learning_rate`, with `--config.lr_schedule=warmup_cosine`) is
the user's choice: no scaled run has been checked against the paper's accuracy (docs/launch.md).

  # Once, from any machine: shards and manifests into the bucket (at least one shard per host).
  python scripts/prepare_data.py --dataset=fpha --raw_dir=/data/fpha \
      --output_dir=gs://BUCKET/fpha_tfr --min_shards=64
  # The code and its .venv on every host (same path), then on all workers at once:
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd htt-jax && \
      .venv/bin/python scripts/train.py \
      --config=configs/fpha_tpu_pod.py --workdir=gs://BUCKET/runs/fpha_pod \
      --config.dataset.data_dir=gs://BUCKET/fpha_tfr"

On a Cloud TPU VM scripts/train.py starts jax.distributed itself (the coordinator is worker 0,
found from the TPU metadata; docs/launch.md), and checkpoints, metrics and evaluation go to the
gs:// workdir.

The same command after a maintenance event or a preemption resumes from the newest checkpoint in
gs://BUCKET/runs/fpha_pod/checkpoints. `--config=configs/fpha_tpu_pod.py:hosts=8` sizes the batch
for 8 hosts of 4 chips (v4, v5p); `:hosts=4,chips_per_host=8` for hosts of 8 chips (some v5e/v6e
slices); `clips_per_chip` sets the per-device batch.
"""

from htt_jax import config_lib


def get_config(arg=None):
  options = config_lib.parse_options(arg, {"hosts": 4, "chips_per_host": 4, "clips_per_chip": 4},
                                       "configs/fpha_tpu_pod.py")
  config = config_lib.base_config()  # configs/fpha.py's settings, in bfloat16
  config.dataset.name = "fpha"
  config.model.num_joints, config.model.num_objects, config.model.num_actions = (
      config_lib.DATASET_HEADS["fpha"])
  config.eval_split = "test"
  config.dtype = "bfloat16"  # TPUs' native matmul type; parameters stay float32.
  config.batch_size = options["hosts"] * options["chips_per_host"] * options["clips_per_chip"]
  config.eval_batch_size = config.batch_size  # must divide over the devices too
  # 'files': each host reads its own shards (p, p + hosts, ...); every host must get at least one,
  # and equal numbers of records keep the hosts' epochs equal: prepare >= hosts shards.
  config.dataset.host_sharding = "files"
  # A preemption or maintenance event loses at most this many steps (a SIGTERM also saves).
  config.checkpoint_every_steps = 500
  # The hosts only decode; augmentation runs on the chips (docs/launch.md, sizing).
  config.dataset.augment.on_device = True
  return config
