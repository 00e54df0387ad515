"""Orbax checkpoints: one layout for trained, resumed and converted models.

A checkpoint directory is an Orbax `CheckpointManager` directory, `D/<step>/` holding items:
  variables: {'params', 'batch_stats'} of the HTT model (all that inference needs);
  metadata:  JSON (config, code version, where the weights came from, ...);
  train:     optimiser state and step (written by training only; the data position and every
             random draw follow from the step and config.seed, so nothing else is stored).
Evaluation and prediction restore `variables` alone, so a checkpoint converted from the reference's
`.pth` (no optimiser state) and a training checkpoint are used the same way. Orbax writes each step
to a temporary name and renames it when complete, so a half-written step never looks finished.
"""

import os
from typing import Any, Optional

import orbax.checkpoint as ocp

from htt_jax import config_lib, storage

VARIABLES = "variables"
METADATA = "metadata"


def _absolute(directory: str) -> str:
  """A local folder made absolute (Orbax wants one); a URL (gs://...) as it is: os.path.abspath
  would turn it into <cwd>/gs:/bucket/..., a local folder."""
  return directory if storage.is_url(directory) else os.path.abspath(directory)


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(_absolute(directory),
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
  return os.path.join(_absolute(directory), str(step))


def restore_variables(directory: str, step: Optional[int] = None,
                      config=None) -> tuple[Any, dict]:
  """(variables, metadata) of `step` (default: the latest) in a checkpoint directory (metadata's
  `step` is the step restored where the saved metadata has none); given the `config` they will run
  with, also `check_variables` (evaluation and prediction pass it)."""
  if not storage.isdir(directory):
    if storage.exists(directory):
      raise NotADirectoryError(f"checkpoint directory {directory!r} is a file, not a folder")
    raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  import jax  # pylint: disable=g-import-not-at-top
  manager = _manager(directory, create=False, read_only=True)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {directory!r} (expected Orbax step "
                              "folders such as 0/ or 1000/)")
    if step not in manager.all_steps():
      raise FileNotFoundError(f"no finished checkpoint step {step} in {directory!r} (it has "
                              f"{sorted(manager.all_steps())})")
    # Arrays come back with the sharding they were saved with (e.g. replicated over 4 devices of
    # 2 hosts); where those devices do not exist, as when evaluating a pod's run on one machine,
    # they are loaded onto this process's first device instead.
    fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          VARIABLES: ocp.args.StandardRestore(fallback_sharding=fallback),
          METADATA: ocp.args.JsonRestore(),
      }))
    except Exception as e:  # pylint: disable=broad-except  (any failure: the files, named)
      # A finished step that does not read (a torn or truncated file, an item missing) is the
      # user's files, not a bug: one line naming the step and Orbax's first line of reason.
      raise config_lib.ConfigError(
          f"checkpoint step {step} in {directory} cannot be restored ({_reason(e)}); repair "
          "or replace its files, or pick another step") from e
  finally:
    # Unclosed, the manager's threads and event loop print pages of tracebacks at exit.
    manager.close()
  variables, metadata = restored[VARIABLES], dict(restored[METADATA] or {})
  # A converted checkpoint's metadata has the reference's epoch, not a step: the step restored
  # is what evaluation reports as `checkpoint_step`.
  metadata.setdefault("step", step)
  if config is not None:
    check_variables(variables, config, directory, metadata)
  return variables, metadata


# The config.model keys that set parameter shapes, named in check_variables' message.
_SHAPE_KEYS = ("num_joints", "num_objects", "num_actions", "hidden_dim", "mlp_dim", "num_heads",
               "num_layers_pose", "num_layers_action")


def check_variables(variables, config, source: str, metadata: Optional[dict] = None) -> None:
  """ConfigError naming `source` (the checkpoint) when the parameters do not have the shapes of
  the config's model: a head or a width the checkpoint was not trained with. Callers check right
  after restoring, before compiling; Flax would fail later with a ScopeParamShapeError. Costs an
  abstract initialisation (jax.eval_shape), nothing is compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from htt_jax.models import build_model, init_variables  # pylint: disable=g-import-not-at-top
  model = build_model(config)
  expected = jax.eval_shape(lambda rng: init_variables(model, rng, config), jax.random.key(0))
  want = {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(expected["params"])}
  have = {jax.tree_util.keystr(k): tuple(np.shape(v))
          for k, v in jax.tree_util.tree_leaves_with_path(variables.get("params", {}))}
  diff = [f"{k}: checkpoint {have.get(k, 'missing')}, config {want.get(k, 'absent')}"
          for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
  if not diff:
    return
  m = config.model
  message = (f"{source}: the checkpoint's parameters do not match the config (config.model: "
             + ", ".join(f"{k}={m[k]}" for k in _SHAPE_KEYS) + "): "
             + "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else ""))
  # Training and conversion store the config in the metadata: name the keys that differ.
  saved = (metadata or {}).get("config")
  saved = saved.get("model") if isinstance(saved, dict) else None
  hints = [f"config.model.{k}={saved[k]}" for k in _SHAPE_KEYS
           if k in saved and saved[k] != m[k]] if isinstance(saved, dict) else []
  message += (f"; its metadata says {', '.join(hints)}: run with those" if hints else
              "; use the config (and --config.model.* overrides) it was trained or converted "
              "with")
  raise config_lib.ConfigError(message)


TRAIN = "train"


class UnrestorableError(config_lib.ConfigError):
  """A workdir holds checkpoints and none of them restores: never a reason to start afresh."""


class StorageError(config_lib.ConfigError):
  """The workdir's storage refused a write (full, over quota, read-only): not a bug to report but
  a fault to fix, so one `error:` line (htt_jax/cli.py) naming the file or folder, the step and
  the newest complete checkpoint, which is intact and which a rerun resumes from."""


# What the operating system says (errno) or Orbax/TensorStore write (text, where the errno is
# lost inside a C++ status) for each storage fault; anything else is left as the error it is.
_STORAGE_FAULTS = (
    (28, ("no space left on device", "os_error_code='28'"), "no space left on device"),
    (122, ("disk quota exceeded", "os_error_code='122'"), "disk quota exceeded"),
    (27, ("file too large", "os_error_code='27'"), "file too large (a file size limit)"),
    (30, ("read-only file system", "os_error_code='30'"), "read-only file system"),
)


def storage_fault(error: BaseException) -> Optional[str]:
  """'no space left on device' (etc.) when `error` or an exception it was raised from is a
  storage fault; None otherwise."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error).lower()
    for errno, texts, reason in _STORAGE_FAULTS:
      if getattr(error, "errno", None) == errno or any(t in text for t in texts):
        return reason
    error = error.__cause__ or error.__context__
  return None


def _reason(error: BaseException) -> str:
  text = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {text[:300]}"


def _global_arrays(tree):
  """With several processes Orbax saves only global arrays, and pmap's state (`out_axes=None`) is
  host-local (this process's devices): such arrays, replicated, become global ones (Orbax's own
  conversion, no copy). Unchanged with one process, and for jit's state (global already)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return tree
  convert = ocp.utils.fully_replicated_host_local_array_to_global_array
  return jax.tree.map(
      lambda x: convert(x) if isinstance(x, jax.Array) and x.is_fully_addressable else x, tree)


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
    self.directory = _absolute(directory)
    self.save_every_steps = max(1, save_every_steps)
    # cleanup_tmp_directories: a save killed in flight leaves `<step>.orbax-checkpoint-tmp`
    # (never a step: Orbax renames it only once complete); it is removed here, not resumed from.
    self.manager = _manager(self.directory, create=True, max_to_keep=keep,
                            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.restored_step, self.skipped = None, []
    self._in_flight = None  # The step whose async save may still be running (or have failed).
    self.failed = False  # A StorageError was raised: close() then only releases the manager.

  def should_save(self, step: int) -> bool:
    """True every `save_every_steps` steps, and when the cluster signals a preemption."""
    return step % self.save_every_steps == 0 or self.manager.reached_preemption(step)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def save(self, step: int, state, metadata: dict) -> None:
    """Starts an async save of `state` (a steps.TrainState) as `step` (forced). A storage fault
    of the previous save (it fails in Orbax's background thread) or of this one's start is a
    StorageError naming the step that failed."""
    # The previous save first: Orbax waits for it inside save() anyway, but then its failure would
    # read as this step's.
    self._guard(self._in_flight, self.manager.wait_until_finished)
    self._in_flight = step
    state = _global_arrays(state)
    self._guard(step, lambda: self.manager.save(step, args=ocp.args.Composite(**{
        VARIABLES: ocp.args.StandardSave({"params": state.params,
                                          "batch_stats": state.batch_stats}),
        TRAIN: ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step}),
        METADATA: ocp.args.JsonSave(metadata),
    }), force=True))

  def complete_steps(self) -> list:
    """The step folders on storage now, newest first (Orbax gives a step its name only once all
    of it is written), without the manager's cached list, which already holds a step in flight."""
    # storage.listdir, not epath's iterdir: on gs:// it reads the store's current listing, not
    # gcsfs's cached one (storage._path).
    return sorted((int(name) for name in storage.listdir(self.directory) if name.isdigit()),
                  reverse=True)

  def intact(self, failed_step: Optional[int] = None) -> str:
    """'the newest complete checkpoint, step M, is intact ...' (for a StorageError's message)."""
    steps = [s for s in self.complete_steps() if failed_step is None or s < failed_step]
    if not steps:
      return ("no earlier checkpoint exists: once the storage is fixed, rerunning the same "
              "command starts the run from step 0")
    return (f"the newest complete checkpoint, step {steps[0]}, is intact: once the storage is "
            "fixed, rerunning the same command resumes from it")

  def _guard(self, step: Optional[int], call) -> None:
    try:
      call()
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless a storage fault)
      reason = storage_fault(e)
      if reason is None or step is None:
        raise
      self.failed = True
      raise StorageError(f"checkpoint step {step} could not be saved in {self.directory}: "
                         f"{reason}; {self.intact(step)}") from e

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
    longer sees it as a step); returns the new paths. Locally one atomic rename per step; on
    gs:// a copy of each object then a delete (storage.rename): a kill half-way leaves the step's
    objects under both names, and the rerun, finding the step still unrestorable, sets it aside
    again under the next free name."""
    import jax  # pylint: disable=g-import-not-at-top
    moved = []
    for step in steps:
      source = os.path.join(self.directory, str(step))
      target, n = source + ".unrestorable", 1
      while storage.exists(target):
        n += 1
        target = f"{source}.unrestorable{n}"
      if jax.process_index() == 0:
        storage.rename(source, target)
      moved.append(target)
    if moved and jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("htt_jax_checkpoints_set_aside")
    self.manager.reload()
    return moved

  def wait(self) -> None:
    self._guard(self._in_flight, self.manager.wait_until_finished)

  def close(self) -> None:
    """Waits for the save in flight (a StorageError when it failed), then releases the manager.
    After a StorageError it only releases: the error has been reported once."""
    try:
      if not self.failed:
        self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  (Orbax re-raises the failed save)
        if not self.failed:
          raise
