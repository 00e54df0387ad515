"""HTT on H2O (two hands, cam4), the paper's settings (t=16, T=128, 270x480).

Train:
  python scripts/train.py --config=configs/h2o.py --workdir=runs/h2o \
      --config.dataset.data_dir=/data/h2o_tfrecords \
      --config.init.resnet_checkpoint=/weights/resnet18-5c106cde.pth
Small local variant: --config=configs/h2o.py:runlocal
"""

from htt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_variant(arg, ('runlocal',), "configs/h2o.py")
  config = config_lib.base_config()
  config.dataset.name = "h2o"
  config.model.num_joints, config.model.num_objects, config.model.num_actions = (
      config_lib.DATASET_HEADS["h2o"])
  config.eval_split = "val"  # Evaluated after training; H2O's public test split has no labels.
  if arg == "runlocal":
    config.batch_size = 1
    config.model.num_frames = 32
    config.dataset.image_size = (96, 160)
    config.num_train_steps = 10
    config.log_every_steps = 1
  return config
