"""HTT on the embedded synthetic dataset: the `make demo` job (2-core CPU, minutes).

  python scripts/demo.py --workdir=runs/demo                 # data + train + evaluate
  python scripts/train.py --config=configs/synthetic.py --workdir=runs/demo \
      --config.dataset.data_dir=runs/demo/data

No ImageNet weights here, so the learning rate is higher than the paper's 3e-5; images are small
(72x128: layer4 is 3x4), clips short (T=32, t=16), the encoders narrower (d=256).
"""

from htt_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.dataset.name = "synthetic"
  config.dataset.data_dir = "runs/demo/data"
  config.dataset.image_size = (72, 128)
  config.dataset.num_parallel_calls = 2
  config.model.num_frames = 32
  config.model.window = 16
  config.model.hidden_dim = 256
  config.model.mlp_dim = 512
  config.model.num_joints = 21
  config.model.num_objects = 4
  config.model.num_actions = 16  # 4 verbs x 4 objects (data_pipeline/synthetic.py defaults).
  config.batch_size = 2
  config.eval_batch_size = 4
  config.learning_rate = 3e-4
  config.init.calibrate_batch_norm = True  # No ImageNet statistics to freeze: measure them.
  config.num_train_steps = 400
  config.lr_decay_epochs = 1000  # No decay within the short run.
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  if arg == "runlocal":
    config.num_train_steps = 10
    config.log_every_steps = 1
  return config
