"""Run by test_parallel.py in a fresh process with 4 CPU devices: jit on 1 device, jit on 4
devices and pmap on 4 devices, 3 steps each from the same state and batches; prints JSON."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import load_config, random_batch  # noqa: E402
from htt_jax import parallel, steps  # noqa: E402


def main():
  config = load_config("smoke")
  config.model.num_frames = 16
  config.batch_size = 4
  config.loss_normalization = sys.argv[1] if len(sys.argv) > 1 else "clip"
  config.model.batch_norm = sys.argv[2] if len(sys.argv) > 2 else "frozen"
  # Adam divides by sqrt(v) + eps: a parameter whose true gradient is zero (the attention key bias:
  # softmax ignores a constant added to every key) gets an update of about lr * noise / |noise|
  # from the summation-order noise of its gradient, which differs between device counts. A larger
  # eps keeps such noise (~1e-10) from being amplified without changing real updates.
  config.adam_eps = 1e-6
  assert jax.device_count() == 4
  num_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
  batches = [random_batch(config, batch_size=4, seed=s, valid_frames=[16, 5, 9, 16])
             for s in range(num_steps)]
  schedule = steps.learning_rate_schedule(config, 10)
  # A host copy: the jitted step donates its input state.
  init = jax.device_get(steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10))
  results = {}
  for name, devices in (("jit1", jax.devices()[:1]), ("jit4", jax.devices())):
    mesh = parallel.create_mesh(devices)
    with jax.set_mesh(mesh):
      state = jax.device_put(init, parallel.replicated(mesh))
      step, to_device = parallel.make_train_step(config, mesh, schedule)  # train.py's factory
      losses = []
      for batch in batches:
        state, metrics = step(state, to_device(batch))
        losses.append({k: float(v) for k, v in metrics.items()})
    results[name] = (losses, jax.device_get(state.params), jax.device_get(state.batch_stats))
  config.parallelism = "pmap"
  step, to_device = parallel.make_train_step(config, parallel.create_mesh(), schedule)
  state, losses = init, []
  for batch in batches:
    state, metrics = step(state, to_device(batch))
    losses.append({k: float(v) for k, v in metrics.items()})
  results["pmap4"] = (losses, jax.device_get(state.params), jax.device_get(state.batch_stats))

  out = {"losses": {k: v[0] for k, v in results.items()}}
  leaves = {k: jax.tree.leaves(v[1]) for k, v in results.items()}
  diff = lambda x, y: np.concatenate([np.abs(a - b).ravel() for a, b in zip(leaves[x], leaves[y])])
  out["max_param_diff"] = {"jit4": float(diff("jit1", "jit4").max()),
                           "pmap4": float(diff("jit1", "pmap4").max()),
                           "jit4_vs_pmap4": float(diff("jit4", "pmap4").max())}
  out["frac_param_diff_over_1e-5"] = {k: float((diff("jit1", k) > 1e-5).mean())
                                      for k in ("jit4", "pmap4")}
  out["max_param_change"] = max(float(np.max(np.abs(a - b))) for a, b in
                                zip(jax.tree.leaves(init.params), leaves["jit1"]))
  if os.environ.get("DEBUG_LEAVES"):
    from flax.traverse_util import flatten_dict
    a, b = flatten_dict(results["jit1"][1]), flatten_dict(results["jit4"][1])
    diffs = sorted(((float(np.max(np.abs(a[k] - b[k]))), "/".join(k)) for k in a), reverse=True)
    print(diffs[:8], file=sys.stderr)
  stats = {k: jax.tree.leaves(v[2]) for k, v in results.items()}
  out["max_stats_rel_diff"] = {k: max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3)))
                                      for a, b in zip(stats[k], stats["jit1"]))
                               for k in ("jit4", "pmap4")}
  out["max_stats_change"] = max(float(np.max(np.abs(a - b))) for a, b in
                                zip(jax.tree.leaves(init.batch_stats), stats["jit1"]))
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
