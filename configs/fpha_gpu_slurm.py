"""HTT on FPHA on several GPU nodes under SLURM, data and workdir on shared storage.

docs/launch.md has the recipe and the input pipeline's sizing.

The paper's model, learning rate and epochs (configs/fpha.py) in bfloat16 with 4 clips per GPU:
on 2 nodes of 8 GPUs, 64 clips per step, 32x the paper's 2, so 32x fewer Adam updates at the
paper's rate (docs/launch.md: scaling the rate is the user's choice, not checked here).
`srun` starts one process per GPU; scripts/train.py sees SLURM_JOB_ID and starts
jax.distributed from SLURM's variables (coordinator: the job's first node), and JAX gives each
process the GPU numbered by its SLURM_LOCALID (so every task must see all of its node's GPUs: ask
for --gpus-per-node, not --gpus-per-task, which would hide all but one).

  #SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8
  srun .venv/bin/python scripts/train.py --config=configs/fpha_gpu_slurm.py:nodes=2 \
      --workdir=/shared/runs/fpha_gpu --config.dataset.data_dir=gs://BUCKET/fpha_tfr

--workdir is a shared file system path (Lustre, NFS) that every node mounts at the same place,
or a gs:// URL (docs/launch.md). `sbatch --requeue`
(or the scheduler's preemption) sends SIGTERM: the run saves and exits, and the requeued job
resumes from the newest checkpoint.
"""

from htt_jax import config_lib


def get_config(arg=None):
  options = config_lib.parse_options(arg, {"nodes": 2, "gpus_per_node": 8, "clips_per_gpu": 4},
                                       "configs/fpha_gpu_slurm.py")
  config = config_lib.base_config()  # configs/fpha.py's settings, in bfloat16
  config.dataset.name = "fpha"
  config.model.num_joints, config.model.num_objects, config.model.num_actions = (
      config_lib.DATASET_HEADS["fpha"])
  config.eval_split = "test"
  config.dtype = "bfloat16"
  config.batch_size = options["nodes"] * options["gpus_per_node"] * options["clips_per_gpu"]
  config.eval_batch_size = config.batch_size  # must divide over the devices too
  # 'files': each process reads its own shards (prepare at least one per GPU, of equal sizes).
  config.dataset.host_sharding = "files"
  config.checkpoint_every_steps = 500
  # Decoding alone already needs several cores per GPU at H100 speed (docs/launch.md, sizing):
  # the augmentation runs on the GPUs.
  config.dataset.augment.on_device = True
  return config
