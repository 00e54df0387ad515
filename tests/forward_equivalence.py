"""Run by test_parallel.py in a fresh process with 2 CPU devices: `parallel.Forward` under jit
(1 and 2 devices, a batch size that needs rounding up) and pmap, and `inference.Predictor`, on 5
clips (so the last compiled batch is padded), against one plain `model.apply` on all 5 clips.
Prints the largest difference per output and setting as JSON, and the frames/s of the benchmark's
train and eval modes under pmap on both devices (its steps are compiled ahead of time, which take
their broadcast arguments on every device: on devices[0] alone they failed)."""

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import load_config, random_batch  # noqa: E402
from htt_jax import inference, parallel  # noqa: E402
from htt_jax.models import build_model  # noqa: E402

NUM_CLIPS = 5


def main():
  config = load_config("smoke")
  config.model.num_frames = 16
  assert jax.device_count() == 2
  batch = random_batch(config, batch_size=NUM_CLIPS, seed=1, valid_frames=[16, 5, 9, 16, 12])
  inputs = (batch["image"], batch["intrinsics"], batch["not_padding"])
  model = build_model(config)
  variables = jax.device_get(jax.jit(model.init)(jax.random.key(2), *inputs))
  reference = jax.device_get(jax.jit(lambda v, *x: model.apply(v, *x, return_attention=True))(
      variables, *inputs))
  # Forward returns the attention weights clip-major (parallel.py).
  layers, _, t, _ = reference["pose_attention"].shape
  reference["pose_attention"] = reference["pose_attention"].reshape(
      (layers, NUM_CLIPS, -1, t, t)).swapaxes(0, 1)
  reference["action_attention"] = reference["action_attention"].swapaxes(0, 1)

  settings = {"jit1_b1": ("jit", jax.devices()[:1], 1), "jit2_b2": ("jit", jax.devices(), 2),
              "jit2_b3": ("jit", jax.devices(), 3), "pmap2_b2": ("pmap", jax.devices(), 2)}
  diffs, host_batch = {}, {}
  for name, (parallelism, devices, batch_size) in settings.items():
    config.parallelism = parallelism
    forward = parallel.Forward(config, parallel.create_mesh(devices), batch_size,
                               return_attention=True)
    host_batch[name] = forward.host_batch_size
    out = forward(variables, batch)  # Labels in the batch are ignored.
    assert set(out) == set(reference), (name, set(out) ^ set(reference))
    for key, value in out.items():
      assert value.shape == reference[key].shape, (name, key, value.shape)
    diffs[name] = {k: float(np.max(np.abs(v - reference[k]))) for k, v in out.items()}

  config.parallelism = "jit"
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  predicted = inference.Predictor(config, variables, batch_size=2).predict(
      {"images": flat(batch["image"]), "intrinsics": flat(batch["intrinsics"]),
       "not_padding": flat(batch["not_padding"])})
  diffs["predictor_jit2_b2"] = {
      k: float(np.max(np.abs(predicted[k] - (reference[k] if k == "action_probs"
                                               else flat(reference[k])))))
      for k in inference.OUTPUT_KEYS + ("action_probs",)}
  scale = {k: float(np.max(np.abs(v))) for k, v in reference.items()}
  from htt_jax.benchmark import measure  # pylint: disable=g-import-not-at-top
  bench = load_config("benchmark", "runlocal")
  bench.model.hidden_dim, bench.model.num_heads, bench.model.mlp_dim = 64, 4, 128
  bench.batch_size, bench.parallelism = 2, "pmap"
  bench.warmup_steps, bench.timed_steps = 0, 1
  benchmark = {mode: measure.measure(bench, mode)["frames_per_second"]
               for mode in ("train", "eval")}
  print("RESULT " + json.dumps({"diffs": diffs, "scale": scale, "host_batch": host_batch,
                                "benchmark_pmap2": benchmark}))


if __name__ == "__main__":
  main()
