"""A tiny HTT for tests: 72x128 images (layer4 is 3x4), T=32, t=16, narrow transformers.

The backbone is the full ResNet-18 (its shape is fixed by the checkpoints); only the encoders and
heads are small. `--config=configs/smoke.py:h2o` gives two-hand heads.
"""

from htt_jax import config_lib


def get_config(arg=None):
  arg = config_lib.check_variant(arg, ('h2o',), "configs/smoke.py")
  config = config_lib.base_config()
  config.dataset.name = "synthetic"
  config.dataset.image_size = (72, 128)
  config.batch_size = 2
  config.eval_batch_size = 2
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.model.num_frames = 32
  config.model.window = 16
  config.model.hidden_dim = 64
  config.model.num_heads = 4
  config.model.mlp_dim = 128
  config.model.num_joints = 21
  config.model.num_objects = 4
  config.model.num_actions = 16  # The synthetic default: 4 verbs x 4 objects.
  if arg == "h2o":
    config.model.num_joints = 42
  config.learning_rate = 1e-4
  return config
