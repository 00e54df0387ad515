"""The training loop on a tiny synthetic dataset: metrics file, exact resume, NaN tripwire."""

import json

import jax
import numpy as np
import pytest

from conftest import load_config
from data_pipeline import synthetic, writer
from htt_jax import checkpointing, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  source = synthetic.SyntheticConfig(seed=3, num_videos=4, image_size=(72, 128))
  vocabulary = synthetic.load_vocabulary(source)
  writer.prepare_split(synthetic.iter_videos(source, "train"), str(out), "train", num_frames=32,
                       window=16, spacing=2, vocabulary=vocabulary, dataset_name="synthetic",
                       image_size=(72, 128), progress=False)
  return str(out)


def _config(data_dir, steps):
  config = load_config("smoke")
  config.dataset.data_dir = data_dir
  config.num_train_steps = steps
  config.checkpoint_every_steps = 2
  config.dataset.shuffle_buffer = 8
  config.dataset.num_parallel_calls = 1
  return config


def _log(workdir):
  with open(f"{workdir}/train_metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_resume_gives_the_same_run(data_dir, tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(_config(data_dir, 4), str(straight))
  train.train_and_evaluate(_config(data_dir, 2), str(resumed))  # stops after step 2
  train.train_and_evaluate(_config(data_dir, 4), str(resumed))  # resumes at step 3

  log_a, log_b = _log(straight), _log(resumed)
  assert [r["step"] for r in log_a] == [1, 2, 3, 4] and [r["step"] for r in log_b] == [1, 2, 3, 4]
  for a, b in zip(log_a, log_b):
    for key in ("loss", "loss/joints2d", "loss/depth", "loss/object", "loss/action",
                "loss/joints3d", "learning_rate"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=f"step {a['step']} {key}")
  assert {"num_devices", "num_processes"} <= set(log_a[0])
  params_a, _ = checkpointing.restore_variables(str(straight / "checkpoints"))
  params_b, _ = checkpointing.restore_variables(str(resumed / "checkpoints"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), params_a, params_b)


def test_non_finite_loss_stops_with_the_step_and_term(data_dir, tmp_path):
  config = _config(data_dir, 3)
  config.learning_rate = 1e30  # The first update blows the parameters up.
  with pytest.raises(train.NonFiniteLossError, match=r"step 2: non-finite .*loss/"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  # Nothing was saved from the bad state.
  assert not list((tmp_path / "w" / "checkpoints").glob("[0-9]*"))
