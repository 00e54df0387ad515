"""Training checkpoints: exact round trip, keep-N, and a corrupted latest step is skipped."""

import os

import jax
import numpy as np

from htt_jax import checkpointing, steps


def _state(config, seed):
  return steps.create_train_state(config, jax.random.key(seed), steps_per_epoch=10)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_round_trip_keep_n_and_corruption_fallback(smoke_config, tmp_path):
  config = smoke_config
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpointing.TrainCheckpointer(directory, save_every_steps=1, keep=2)
  base, states = _state(config, 0), {}
  for step in (1, 2, 3):
    state = base.replace(step=step, params=jax.tree.map(lambda x: x + step, base.params))
    states[step] = jax.device_get(state)
    ckpt.save(step, state, {"step": step, "data": {"epoch": 0, "batches": step}})
  ckpt.close()
  assert sorted(int(p) for p in os.listdir(directory) if p.isdigit()) == [2, 3]  # keep 2

  target = jax.device_put(base)  # On a device, as train.py holds it.
  restored, metadata = checkpointing.TrainCheckpointer(directory, 1).restore_latest(target)
  assert metadata == {"step": 3, "data": {"epoch": 0, "batches": 3}}
  _assert_same(restored.params, states[3].params)
  _assert_same(restored.opt_state, states[3].opt_state)
  assert int(restored.step) == 3
  # The same abstract values (dtype, weak type, shape) as a fresh state: a resumed run compiles
  # the train step of an uninterrupted one (the step counter is not a weakly typed Python 0).
  aval = lambda tree: jax.tree.map(lambda x: jax.typeof(x), tree)
  assert aval(restored) == aval(target)
  # Inference reads the same checkpoint's variables.
  variables, _ = checkpointing.restore_variables(directory)
  _assert_same(variables["params"], states[3].params)

  # Truncate every array file of step 3: resume falls back to step 2 with a warning.
  for root, _, files in os.walk(os.path.join(directory, "3", "train")):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, "r+b") as f:
          f.truncate(10)
  restored, metadata = checkpointing.TrainCheckpointer(directory, 1).restore_latest(target)
  assert metadata["step"] == 2
  _assert_same(restored.params, states[2].params)


def test_empty_workdir_restores_nothing(smoke_config, tmp_path):
  ckpt = checkpointing.TrainCheckpointer(str(tmp_path / "c"), save_every_steps=5)
  assert ckpt.restore_latest(_state(smoke_config, 0)) is None
  assert not ckpt.should_save(3) and ckpt.should_save(5)


def test_round_trip_with_frozen_parameters(smoke_config, tmp_path):
  """With config.frozen_params the optimiser state is optax's partition (Adam for the trained
  parameters, an empty state for the frozen ones): it saves and restores as it was."""
  config = smoke_config.copy_and_resolve_references()
  config.frozen_params = r"backbone/(conv1|bn1)/\w+"
  base = _state(config, 0)
  state = base.replace(step=1, opt_state=jax.tree.map(lambda x: x + 1, base.opt_state))
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpointing.TrainCheckpointer(directory, save_every_steps=1)
  ckpt.save(1, state, {"step": 1})
  ckpt.close()
  restored, _ = checkpointing.TrainCheckpointer(directory, 1).restore_latest(jax.device_put(base))
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(base.opt_state)
  _assert_same(restored.opt_state, state.opt_state)
  _assert_same(restored.params, state.params)
