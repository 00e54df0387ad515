"""jit on 1 device, jit on 4 devices and pmap on 4 devices give the same losses and parameters."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


# 'batch': BatchNorm on batch statistics (model.batch_norm), which must be those of the global
# batch under jit and pmap alike. One step only there: with batch statistics many backbone kernel
# gradients are tiny on these noise images, and Adam (whose first steps are ~lr * sign(gradient))
# turns their summation-order noise into different updates from the second step on (measured:
# a third of the kernels' elements then differ by up to 5e-4 between device counts).
@pytest.mark.parametrize("normalization,batch_norm,num_steps", [
    ("clip", "frozen", 3), ("frame", "frozen", 3), ("clip", "batch", 1)])
def test_jit_and_pmap_agree_on_4_cpu_devices(normalization, batch_norm, num_steps):
  run = subprocess.run([sys.executable, str(ROOT / "tests" / "parallel_equivalence.py"),
                        normalization, batch_norm, str(num_steps)], capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-4000:]
  result = json.loads(run.stdout.split("RESULT ", 1)[1])
  reference = result["losses"]["jit1"]
  for mode in ("jit4", "pmap4"):
    for step, (ours, theirs) in enumerate(zip(result["losses"][mode], reference)):
      for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{mode} step {step} {key}")
  # Same device count, two compilations. They reduce in different orders: BatchNorm's moments with
  # batch statistics, and with the folded BatchNorm (models/resnet.py) the gradient of the folded
  # kernel (SPMD all-reduces it before the chain rule to kernel and scale, pmap after), so Adam's
  # bound below applies to both (measured 1.3e-4 after 3 steps, frozen; below 1e-5 before the fold).
  assert result["max_param_diff"]["jit4_vs_pmap4"] < 2 * num_steps * 1e-4, result["max_param_diff"]
  # 1 vs 4 devices sum gradients in a different order. Adam normalises every element, so an element
  # whose gradient is mostly cancellation noise can move differently (Adam's step is at most ~lr,
  # so by at most 2 lr per step); all but a few of the 14M elements agree to 1e-5 (measured with
  # frozen BatchNorm: 0 to 2e-5 of them do not for jit4; for pmap4, whose folded-kernel gradients
  # are reduced after the chain rule (above), 2.1e-4 on the CI machine).
  bound = 2 * num_steps * 1e-4  # 2 lr x steps (smoke learning rate 1e-4)
  for mode in ("jit4", "pmap4"):
    # Batch statistics: 0.16% measured after one step (Adam sign flips of tiny gradients, above).
    limit = 1e-3 if batch_norm == "frozen" else 1e-2
    assert result["frac_param_diff_over_1e-5"][mode] < limit, result
    assert result["max_param_diff"][mode] < bound, result
  assert result["max_param_change"] > 1e-4  # training did move the parameters
  # BatchNorm statistics: frozen ones stay put; batch ones are the global batch's on every layout.
  if batch_norm == "frozen":
    assert result["max_stats_change"] == 0.0, result
  else:
    assert result["max_stats_change"] > 1e-3, result
    # Per-device statistics (a BatchNorm not reduced over the devices) would differ by O(1).
    assert max(result["max_stats_rel_diff"].values()) < 1e-3, result


def test_one_forward_jit_pmap_and_predictor_agree_on_2_cpu_devices():
  """parallel.Forward (evaluation's, Predictor's and the benchmark's forward pass) pads, shards and
  un-pads: on 5 clips, every layout gives model.apply's outputs for exactly those clips."""
  run = subprocess.run([sys.executable, str(ROOT / "tests" / "forward_equivalence.py")],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-4000:]
  result = json.loads(run.stdout.split("RESULT ", 1)[1])
  # Per device, its share of the clips: 1 on one device; 1 (2 clips) or 2 (3 rounded up to 4) on 2.
  assert result["host_batch"] == {"jit1_b1": 1, "jit2_b2": 2, "jit2_b3": 4, "pmap2_b2": 2}
  assert all(fps > 0 for fps in result["benchmark_pmap2"].values()), result["benchmark_pmap2"]
  for setting, diffs in result["diffs"].items():
    for key, diff in diffs.items():
      # Only the summation order may differ (a convolution over fewer clips per call).
      assert diff <= 1e-4 * max(1.0, result["scale"][key]), (setting, key, diff)


def test_predictor_and_benchmark_eval_mode_run_parallel_forward(monkeypatch, smoke_config):
  from conftest import load_config, random_batch  # pylint: disable=g-import-not-at-top
  from htt_jax import inference, parallel  # pylint: disable=g-import-not-at-top
  from htt_jax.benchmark import measure  # pylint: disable=g-import-not-at-top
  from htt_jax.models import build_model  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  made = []

  class Recorded(parallel.Forward):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self)

  monkeypatch.setattr(parallel, "Forward", Recorded)
  batch = random_batch(smoke_config, batch_size=1)
  model = build_model(smoke_config)
  variables = jax.jit(model.init)(jax.random.key(0), batch["image"], batch["intrinsics"],
                                  batch["not_padding"])
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  inference.Predictor(smoke_config, variables).predict(
      {"images": flat(batch["image"]), "intrinsics": flat(batch["intrinsics"]),
       "not_padding": flat(batch["not_padding"])})
  assert len(made) == 1
  config = load_config("benchmark", "runlocal")
  config.model.hidden_dim, config.model.num_heads, config.model.mlp_dim = 64, 4, 128
  config.warmup_steps, config.timed_steps = 0, 1
  row = measure.measure(config, "eval")
  assert len(made) == 2 and made[1].host_batch_size == config.batch_size
  assert row["frames_per_second"] > 0
