"""Orbax checkpoints: one layout for trained, resumed and converted models.

A checkpoint directory is an Orbax `CheckpointManager` directory, `D/<step>/` holding items:
  variables: {'params', 'batch_stats'} of the HTT model (all that inference needs);
  metadata:  JSON (config, code version, where the weights came from, ...);
  train:     optimiser state and data/RNG position (written by training only).
Evaluation and prediction restore `variables` alone, so a checkpoint converted from the reference's
`.pth` (no optimiser state) and a training checkpoint are used the same way. Orbax writes each step
to a temporary name and renames it when complete, so a half-written step never looks finished.
"""

import os
from typing import Any, Optional

import orbax.checkpoint as ocp

VARIABLES = "variables"
METADATA = "metadata"


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(**options))


def save_variables(directory: str, variables, step: int = 0,
                   metadata: Optional[dict] = None) -> str:
  """Writes model variables (and JSON metadata) as step `step`; returns the step's path."""
  manager = _manager(directory, create=True)
  manager.save(step, args=ocp.args.Composite(**{
      VARIABLES: ocp.args.StandardSave(variables),
      METADATA: ocp.args.JsonSave(metadata or {}),
  }), force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(os.path.abspath(directory), str(step))


def restore_variables(directory: str, step: Optional[int] = None) -> tuple[Any, dict]:
  """(variables, metadata) of `step` (default: the latest) in a checkpoint directory."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  import jax  # pylint: disable=g-import-not-at-top
  manager = _manager(directory, create=False, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no finished checkpoint in {directory!r} (expected Orbax step "
                            "folders such as 0/ or 1000/)")
  # Arrays come back with the sharding they were saved with (e.g. replicated over 4 devices of 2
  # hosts); where those devices do not exist, as when evaluating a pod's run on one machine, they
  # are loaded onto this process's first device instead.
  fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  restored = manager.restore(step, args=ocp.args.Composite(**{
      VARIABLES: ocp.args.StandardRestore(fallback_sharding=fallback),
      METADATA: ocp.args.JsonRestore(),
  }))
  manager.close()
  return restored[VARIABLES], dict(restored[METADATA] or {})

TRAIN = "train"


class TrainCheckpointer:
  """Training checkpoints of a workdir: async saves every N steps, keep-N, preemption-aware,
  and resume from the newest step that restores (a truncated or unreadable one is skipped with a
  warning, the previous one is used).

  Items per step: `variables` (params, batch_stats), `train` (opt_state, step) and `metadata`
  (JSON: config, code version, data position and anything the loop needs for an exact resume).
  """

  def __init__(self, directory: str, save_every_steps: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every_steps = max(1, save_every_steps)
    self.manager = _manager(self.directory, create=True, max_to_keep=keep,
                            enable_async_checkpointing=async_save)

  def should_save(self, step: int) -> bool:
    """True every `save_every_steps` steps, and when the cluster signals a preemption."""
    return step % self.save_every_steps == 0 or self.manager.reached_preemption(step)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def save(self, step: int, state, metadata: dict) -> None:
    """Starts an async save of `state` (a steps.TrainState) as `step` (forced)."""
    self.manager.save(step, args=ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardSave({"params": state.params,
                                          "batch_stats": state.batch_stats}),
        TRAIN: ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step}),
        METADATA: ocp.args.JsonSave(metadata),
    }), force=True)

  def restore_latest(self, state):
    """(state, metadata) from the newest restorable step, with `state` as the target (shapes,
    dtypes and shardings); None when the workdir has no checkpoint."""
    from absl import logging  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardRestore(abstract({"params": state.params,
                                                          "batch_stats": state.batch_stats})),
            TRAIN: ocp.args.StandardRestore(abstract({"opt_state": state.opt_state,
                                                      "step": state.step})),
            METADATA: ocp.args.JsonRestore(),
        }))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the "
                        "previous one", step, self.directory, type(e).__name__, e)
        continue
      variables, train = restored[VARIABLES], restored[TRAIN]
      state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                            opt_state=train["opt_state"], step=train["step"])
      return state, dict(restored[METADATA] or {})
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
