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

from htt_jax import config_lib

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


class UnrestorableError(config_lib.ConfigError):
  """A workdir holds checkpoints and none of them restores: never a reason to start afresh."""


def _reason(error: BaseException) -> str:
  text = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {text[:300]}"


class TrainCheckpointer:
  """Training checkpoints of a workdir: async saves every N steps, keep-N, preemption-aware, and
  resume from the newest step that restores.

  Items per step: `variables` (params, batch_stats), `train` (opt_state, step) and `metadata`
  (JSON: config, data identity, code version, data position).

  Resume rules (docs/training.md, "Resuming"): a newest step that does not restore while an older
  one does (a file torn by a storage fault) is skipped with a warning and, once the caller has
  accepted the older step, moved aside as `<step>.unrestorable` (`set_aside`): left in place, it
  would make the save of that step number fail (Orbax never overwrites a step) and take one of the
  keep-N places from the good steps. A folder with steps none of which restores raises
  UnrestorableError naming each step's reason: nothing is moved or deleted. Keep-N itself only
  deletes old steps after a newer save has been committed (Orbax's finalize), so the step resumed
  from survives until a newer one exists.
  """

  def __init__(self, directory: str, save_every_steps: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every_steps = max(1, save_every_steps)
    self.manager = _manager(self.directory, create=True, max_to_keep=keep,
                            enable_async_checkpointing=async_save)
    self.restored_step, self.skipped = None, []

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

  def steps(self) -> list:
    """The finished steps in the folder, newest first."""
    return sorted(self.manager.all_steps(), reverse=True)

  def _unrestorable(self, failures) -> UnrestorableError:
    reasons = "; ".join(f"step {step}: {reason}" for step, reason in failures)
    return UnrestorableError(
        f"no checkpoint in {self.directory} can be restored ({reasons}). Nothing was changed: "
        "training never starts afresh over checkpoints. Where the reasons name shapes, this "
        "config builds another model than the one saved; otherwise repair the files, or move the "
        "folder away to start a new run")

  def latest_metadata(self) -> Optional[tuple[int, dict]]:
    """(step, metadata) of the newest step whose metadata item reads (JSON only: no arrays, no
    compilation); None when the folder has no step. UnrestorableError when none reads."""
    failures = []
    for step in self.steps():
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            METADATA: ocp.args.JsonRestore()}))
        return step, dict(restored[METADATA] or {})
      except Exception as e:  # pylint: disable=broad-except  (any failure: try the previous)
        failures.append((step, _reason(e)))
    if failures:
      raise self._unrestorable(failures)
    return None

  def restore_latest(self, state):
    """(state, metadata) from the newest step that restores, with `state` as the target (shapes,
    dtypes and shardings); None when the folder has no step; UnrestorableError when none
    restores. Afterwards `restored_step` is the step and `skipped` the newer steps that did not
    restore, as (step, reason)."""
    from absl import logging  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    failures = []
    for step in self.steps():
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            VARIABLES: ocp.args.StandardRestore(abstract({"params": state.params,
                                                          "batch_stats": state.batch_stats})),
            TRAIN: ocp.args.StandardRestore(abstract({"opt_state": state.opt_state,
                                                      "step": state.step})),
            METADATA: ocp.args.JsonRestore(),
        }))
      except Exception as e:  # pylint: disable=broad-except  (any failure: try the previous)
        failures.append((step, _reason(e)))
        logging.warning("checkpoint step %d in %s cannot be restored (%s); trying the previous "
                        "one", step, self.directory, failures[-1][1])
        continue
      variables, train = restored[VARIABLES], restored[TRAIN]
      state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                            opt_state=train["opt_state"], step=train["step"])
      self.restored_step, self.skipped = step, failures
      return state, dict(restored[METADATA] or {})
    if failures:
      raise self._unrestorable(failures)
    return None

  def set_aside(self, steps) -> list:
    """Renames each unrestorable step folder to `<step>.unrestorable` (process 0; Orbax then no
    longer sees it as a step); returns the new paths."""
    import jax  # pylint: disable=g-import-not-at-top
    moved = []
    for step in steps:
      source = os.path.join(self.directory, str(step))
      target, n = source + ".unrestorable", 1
      while os.path.exists(target):
        n += 1
        target = f"{source}.unrestorable{n}"
      if jax.process_index() == 0:
        os.rename(source, target)
      moved.append(target)
    if moved and jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("htt_jax_checkpoints_set_aside")
    self.manager.reload()
    return moved

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
