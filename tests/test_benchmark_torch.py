"""The PyTorch baseline of the benchmark: its process never loads TensorFlow, its train step runs,
and our rows report the ratio to it. (A torch test: Makefile runs it in its own pytest process.)"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from conftest import ROOT, load_config  # noqa: E402
from htt_jax.benchmark import baseline, runner  # noqa: E402


def test_baseline_module_imports_neither_tensorflow_nor_jax():
  check = ("import sys, htt_jax.baselines.torch_benchmark; "
           "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules, 'loaded'")
  done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]


def test_torch_train_step_in_a_subprocess():
  config = load_config("benchmark", "runlocal")
  config.dataset.image_size = (32, 64)  # PyTorch only: small and fast.
  config.warmup_steps, config.timed_steps = 0, 2
  result = baseline.run_torch(baseline.spec(config, "train", num_devices=1))
  assert result["platform"] == "cpu" and result["mode"] == "train"
  (variant,) = result["variants"]  # On a CPU: eager float32 only.
  assert variant["variant"] == "eager_float32" and variant["timed_steps"] == 2
  assert variant["frames_per_second"] == pytest.approx(16 / variant["step_time_ms_median"] * 1e3)


def test_rows_report_the_ratio_to_the_baseline(tmp_path):
  config = load_config("benchmark", "runlocal")  # d = 512: the reference's width
  config.baseline = "torch"
  config.warmup_steps, config.timed_steps = 0, 1
  output = str(tmp_path / "eval.json")
  (row,) = runner.run_benchmark(config, "eval", output)
  with open(output) as f:
    assert json.load(f) == [json.loads(json.dumps(row))]
  assert row["baseline"]["implementation"] == "torch" and row["baseline"]["batch_size"] == 1
  assert row["baseline_variant"] == "eager_float32" and row["versions"]["torch"]
  assert row["speedup_vs_baseline"] == pytest.approx(
      row["frames_per_second_per_device"] / row["baseline_frames_per_second"])
  assert row["baseline"]["variants"][0]["model_tflops_per_second"] > 0
  with open(tmp_path / "eval.md") as f:
    assert "ours/baseline" in f.read()


def test_incompatible_configs_are_refused_before_measuring():
  config = load_config("benchmark", "runlocal")
  config.baseline = "torch"
  config.model.hidden_dim = 64
  with pytest.raises(ValueError, match="hidden_dim=512"):
    runner.run_benchmark(config, "train")


def test_backbone_modes_run_pytorch_beside_ours(tmp_path):
  """--mode=backbone and --mode=conv_layers with the PyTorch side in its own process: the same
  frames, its times beside ours, and for the backbone our speed-up on forward + backward."""
  from htt_jax.benchmark import flops  # pylint: disable=g-import-not-at-top
  config = load_config("benchmark", "runlocal")  # 72x128
  config.model.num_frames = config.model.window = 1  # One frame: batch_size x T
  config.baseline = "torch"
  config.model.hidden_dim = 64  # The heads do not run here: no need for the reference's width.
  config.warmup_steps, config.timed_steps = 0, 1
  (row,) = runner.run_benchmark(config, "backbone", str(tmp_path / "backbone.json"))
  theirs = row["baseline"]
  assert theirs["implementation"] == "torch" and theirs["device_kind"] == "cpu"
  assert theirs["forward_backward_time_ms_median"] > 0 and row["versions"]["torch"]
  assert theirs["backward_time_ms_median"] == pytest.approx(
      theirs["forward_backward_time_ms_median"] - theirs["forward_time_ms_median"])
  assert row["speedup_vs_baseline"] == pytest.approx(
      theirs["forward_backward_time_ms_median"] / row["forward_backward_time_ms_median"])
  assert row["baseline_frames_per_second"] == pytest.approx(theirs["frames_per_second"])
  with open(tmp_path / "backbone.md") as f:
    assert "PyTorch forward" in f.read()

  (row,) = runner.run_benchmark(config, "conv_layers", str(tmp_path / "conv.json"))
  names = [s.name for s in flops.resnet18_convolutions(72, 128)]
  assert [layer["layer"] for layer in row["baseline"]["layers"]] == names
  assert all(layer[f"{g}_ms_median"] >= 0 for layer in row["baseline"]["layers"]
             for g in ("forward", "dgrad", "wgrad"))
  assert row["baseline"]["layers"][0]["forward_ms_median"] > 0
