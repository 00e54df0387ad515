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
  manager = _manager(directory, create=False, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no finished checkpoint in {directory!r} (expected Orbax step "
                            "folders such as 0/ or 1000/)")
  restored = manager.restore(step, args=ocp.args.Composite(**{
      VARIABLES: ocp.args.StandardRestore(),
      METADATA: ocp.args.JsonRestore(),
  }))
  manager.close()
  return restored[VARIABLES], dict(restored[METADATA] or {})
