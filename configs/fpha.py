"""HTT on FPHA (First-Person Hand Action), the paper's settings (t=16, T=128, 270x480).

Train:
  python scripts/train.py --config=configs/fpha.py --workdir=runs/fpha \
      --config.dataset.data_dir=/data/fpha_tfrecords \
      --config.init.resnet_checkpoint=/weights/resnet18-5c106cde.pth
Small local variant: --config=configs/fpha.py:runlocal
"""

from htt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_variant(arg, ('runlocal',), "configs/fpha.py")
  config = config_lib.base_config()
  config.dataset.name = "fpha"
  config.model.num_joints, config.model.num_objects, config.model.num_actions = (
      config_lib.DATASET_HEADS["fpha"])
  config.eval_split = "test"  # Evaluated after training; FPHA has train and test splits only.
  if arg == "runlocal":
    config.batch_size = 1
    config.model.num_frames = 32
    config.dataset.image_size = (96, 160)
    config.num_train_steps = 10
    config.log_every_steps = 1
  return config
