"""`train_and_evaluate(config, workdir)`: the training loop (big_vision / Flax ImageNet style),
then evaluation of `config.eval_split` on the last checkpoint (evaluate.py, into
`workdir/eval/<split>/`, as scripts/evaluate.py writes it; '' skips it).

One batch: tf.data (this host's clips) -> global array sharded on 'data' (jit) or split per local
device (pmap) -> compiled `steps.train_step` -> metrics (TensorBoard, train_metrics.jsonl, progress
bar) -> Orbax checkpoint every `checkpoint_every_steps`, on preemption/SIGTERM and at the end.
Resuming from `workdir/checkpoints` continues with the same data order and random streams; a
config that would not continue that run is refused before anything is compiled or written
(htt_jax/resume.py), and checkpoints none of which restores are an error, never a fresh start.
Without checkpoints, `config.init.checkpoint` starts a new run (step 0, new optimiser) from another
run's or a converted .pth's variables.
"""

import contextlib
import functools
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

import htt_jax
from htt_jax import (checkpointing, config_lib, evaluate, failpoints, input_pipeline, metrics_log,
                     parallel, resume, steps, storage)


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class _SigtermFlag:
  """SIGTERM (what schedulers send before preemption) asks the loop to save and exit.

  Only for a single process. With several, `jax.distributed.initialize` has installed JAX's
  preemption notifier, which catches SIGTERM and lets every process agree on one step to stop at
  (Orbax's `reached_preemption`). A Python handler would replace that notifier: each process would
  then stop at whatever step it saw its own signal, and the others would wait forever in the next
  collective (or in the checkpoint's barriers).
  """

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self.received = False
    self._previous = None

  def __enter__(self):
    if not self.enabled:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no handler, preemption still works through Orbax.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step: int, metrics: dict) -> None:
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise NonFiniteLossError(f"step {step}: non-finite {', '.join(sorted(bad))} "
                             f"({', '.join(f'{k}={metrics[k]}' for k in sorted(bad))}); training "
                             "stopped, the last good checkpoint is kept")


def _metadata(config, step: int, steps_per_epoch: int, data: dict) -> dict:
  return {"step": step, "epoch": step // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
          "seed": config.seed, "htt_jax_version": htt_jax.__version__,
          "config": resume.config_json(config), "data": data}


def _check_resume(config, data, ckpt, step: int, metadata: dict, steps_per_epoch: int) -> None:
  """resume.check_compatible, logging the differences `config.resume_allow_changes` lets through."""
  allowed = resume.check_compatible(metadata, config, data, directory=ckpt.directory, step=step,
                                    steps_per_epoch=steps_per_epoch)
  if allowed:
    logging.warning("resuming step %d of %s with changes allowed by config.%s: %s", step,
                    ckpt.directory, resume.ALLOW_KEY,
                    "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in allowed))


def _imagenet_backbone(path: str) -> dict:
  """The backbone of config.init.resnet_checkpoint, read before the model is built: a file that is
  not a torchvision ResNet-18 (or PyTorch missing) is a ConfigError naming the key."""
  try:
    from htt_jax import import_torch  # pylint: disable=g-import-not-at-top  (torch is optional)
    return import_torch.load_resnet(path)
  except ImportError as e:  # No PyTorch: the message says what to install.
    raise config_lib.ConfigError(f"config.init.resnet_checkpoint={path!r}: {e}") from e
  except FileNotFoundError:
    raise
  except ValueError as e:  # TorchCheckpointError, CheckpointMismatchError, ...
    text = " ".join(str(e).split())
    if len(text) > 600:  # A mismatch lists every key: the first ones say what the file is.
      text = f"{text[:600]} ... ({len(text) - 600} more characters)"
    raise config_lib.ConfigError(
        f"config.init.resnet_checkpoint={path!r} is not a torchvision ResNet-18 state_dict "
        f"that this model can load: {text}") from e


def initial_variables(config, fresh):
  """The variables of the checkpoint folder `config.init.checkpoint` (its newest step: a training
  run's checkpoints or a converted .pth), for a new run: same tree and shapes as `fresh` (the
  model this config builds) or a ConfigError naming the first differences."""
  loaded, _ = checkpointing.restore_variables(config.init.checkpoint)
  flat_fresh = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(fresh)}
  flat_loaded = {jax.tree_util.keystr(p): x
                 for p, x in jax.tree_util.tree_leaves_with_path(loaded)}
  bad = [f"{k}: {tuple(flat_loaded[k].shape) if k in flat_loaded else 'missing'} in the "
         f"checkpoint, {tuple(v.shape) if v is not None else 'missing'} in this model"
         for k, v in ((k, flat_fresh.get(k)) for k in sorted(set(flat_fresh) | set(flat_loaded)))
         if v is None or k not in flat_loaded or flat_loaded[k].shape != v.shape]
  if bad:
    raise config_lib.ConfigError(
        f"config.init.checkpoint={config.init.checkpoint!r} holds variables of another model "
        f"({len(bad)} differ; {'; '.join(bad[:4])}): set config.model to the model it was "
        "trained as")
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(flat_loaded[jax.tree_util.keystr(p)], x.dtype), fresh)


def _compile(train_step, state, batch, what: str = ""):
  """The jit train step compiled for these arguments, its compile time and memory logged."""
  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  _log_compiled(compiled, time.perf_counter() - start, what)
  return compiled


def _log_compiled(compiled, seconds: float, what: str = "") -> None:
  logging.info("compiled the train step%s in %.1f s", what, seconds)
  try:
    memory = compiled.memory_analysis()
    if memory is not None:
      logging.info("train step memory per device: arguments %.1f MiB, outputs %.1f MiB, "
                   "temporaries %.1f MiB", memory.argument_size_in_bytes / 2**20,
                   memory.output_size_in_bytes / 2**20, memory.temp_size_in_bytes / 2**20)
  except Exception as e:  # pylint: disable=broad-except  (not every backend reports it)
    logging.info("no memory analysis on this backend (%s)", e)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from `workdir/checkpoints` if present), then evaluates `config.eval_split`.

  Returns the last logged training metrics; when the evaluation ran, its report (metrics.json's
  content) is under the key 'eval'. A run stopped early (SIGTERM, preemption) is not evaluated.
  """
  config_lib.validate_config(config, num_devices=jax.device_count())
  resume.allowed_changes(config)  # A misspelt key fails now, not on the next resume.
  # A read-only or missing-bucket workdir fails now (PermissionError naming it), not at the first
  # checkpoint after compiling and training.
  storage.check_writable(workdir)
  manifest = input_pipeline.load_manifest(config.dataset.data_dir, "train", config)
  eval_split = config.get("eval_split", "")
  if eval_split:  # A missing split should stop the run now, not after training.
    input_pipeline.load_manifest(config.dataset.data_dir, eval_split, config)
  steps_per_epoch = input_pipeline.steps_per_epoch(manifest, config.batch_size)
  total_steps = steps.total_steps(config, steps_per_epoch)
  schedule = steps.learning_rate_schedule(config, steps_per_epoch)
  is_main = jax.process_index() == 0
  data = resume.data_identity(manifest)
  # The resume guard, before anything is compiled or written: a rerun whose config would not
  # continue the run in workdir/checkpoints stops here (htt_jax/resume.py).
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                         config.checkpoint_every_steps, config.keep_checkpoints)
  previous = ckpt.latest_metadata()
  if previous is not None:  # Resuming takes precedence over config.init.*
    _check_resume(config, data, ckpt, *previous, steps_per_epoch)
  elif config.init.checkpoint:
    logging.info("starting from the variables of %s (config.init.checkpoint)",
                 config.init.checkpoint)
  elif not config.init.resnet_checkpoint:
    logging.warning("config.init.resnet_checkpoint is empty: the ResNet-18 backbone starts from "
                    "RANDOM weights, not ImageNet as in the paper")

  imagenet = None
  if config.init.resnet_checkpoint and not (previous is None and config.init.checkpoint):
    imagenet = _imagenet_backbone(config.init.resnet_checkpoint)  # Before the model is built.

  mesh = parallel.create_mesh()
  rng = jax.random.key(config.seed)
  with jax.set_mesh(mesh):
    variables = steps.random_variables(config, rng)
    if previous is None and config.init.checkpoint:  # A new run from another run's weights.
      variables = initial_variables(config, variables)
    elif imagenet is not None:  # ImageNet backbone, as the reference starts
      from htt_jax import import_torch  # pylint: disable=g-import-not-at-top  (torch is optional)
      variables = import_torch.init_backbone_from_resnet(variables, imagenet)
    state = jax.device_put(steps.create_train_state(config, rng, steps_per_epoch, variables),
                           parallel.replicated(mesh))
  freeze_from = steps.freezes_later(config)
  if freeze_from >= total_steps:
    logging.warning("config.frozen_params_from_step=%d is not before the run's last step (%d): "
                    "nothing is frozen", freeze_from, total_steps)
  if config.frozen_params:
    frozen = jax.tree_util.tree_leaves(steps.frozen_mask(config, state.params))
    sizes = [x.size for x in jax.tree_util.tree_leaves(state.params)]
    logging.info("config.frozen_params=%r: %d of %d parameter arrays (%.2f M of %.2f M values) "
                 "keep %s", config.frozen_params, sum(frozen), len(frozen),
                 sum(n for n, f in zip(sizes, frozen) if f) / 1e6, sum(sizes) / 1e6,
                 f"the values of step {freeze_from} from then on" if freeze_from
                 else "their initial values")
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, metadata = restored
    if previous is None or ckpt.restored_step != previous[0]:  # Fell back past a torn step.
      _check_resume(config, data, ckpt, ckpt.restored_step, metadata, steps_per_epoch)
    if ckpt.skipped:
      moved = ckpt.set_aside([step for step, _ in ckpt.skipped])
      logging.warning("resuming from step %d: the newer checkpoints did not restore (%s) and are "
                      "moved aside, not deleted: %s", ckpt.restored_step,
                      "; ".join(f"step {s}: {r}" for s, r in ckpt.skipped), ", ".join(moved))
    logging.info("resumed from step %d (%s)", int(state.step), ckpt.directory)
  start_step = int(state.step)
  calibrations = [(name, getattr(steps, name)) for name in ("calibrate_batch_norm",
                                                             "calibrate_pose_head")
                  if config.init.get(name, False)]
  if start_step == 0 and calibrations and config.init.checkpoint:
    # Calibrations set statistics for random weights; they would overwrite the loaded ones.
    logging.info("config.init.checkpoint is set: %s skipped",
                 ", ".join(name for name, _ in calibrations))
  elif start_step == 0 and calibrations:
    # A separate stream (seed + 1), so the training batches are those of a run without it.
    batch = next(input_pipeline.train_batches(config, seed=config.seed + 1))
    with jax.set_mesh(mesh):
      batch = parallel.global_batch(batch, mesh)
      for name, calibrate in calibrations:  # BatchNorm first: the pose head sees its outputs
        state = jax.jit(functools.partial(calibrate, config=config),
                        out_shardings=parallel.replicated(mesh))(state, batch)
        logging.info("%s on %d clips", name, config.batch_size)

  batches = input_pipeline.train_batches(config, start_step=start_step)
  # Two compiled steps when config.frozen_params freeze late: the one before trains everything.
  train_step, to_device = parallel.make_train_step(config, mesh, schedule,
                                                   freeze=start_step >= freeze_from)

  with _storage_faults(f"the TensorBoard events in {workdir} could not be created", ckpt):
    writer = metric_writer(workdir, enabled=is_main and config.get("tensorboard", True))
  jsonl = None
  if is_main:  # Whole lines of steps 1..start_step, whatever a kill left (metrics_log.py).
    jsonl = metrics_log.Writer(metrics_log.path_in(workdir), start_step)
  frames_per_step = config.batch_size * config.model.num_frames
  last = {}
  progress = _progress(start_step, total_steps, is_main)
  window_start, window_steps = time.perf_counter(), 0
  stopped, failure = False, None
  try:
    with _SigtermFlag(enabled=jax.process_count() == 1) as sigterm, jax.set_mesh(mesh):
      for step in range(start_step + 1, total_steps + 1):
        batch = to_device(next(batches))
        if step == freeze_from + 1 and step > start_step + 1:
          paused = time.perf_counter()
          train_step, _ = parallel.make_train_step(config, mesh, schedule, freeze=True)
          if config.parallelism == "jit":
            train_step = _compile(train_step, state, batch, f" with config.frozen_params frozen "
                                  f"(from step {step})")
          window_start += time.perf_counter() - paused  # Throughput excludes compiling.
        elif step == start_step + 1 and config.parallelism == "jit":
          train_step = _compile(train_step, state, batch)
          window_start = time.perf_counter()
        state, metrics = train_step(state, batch)
        failpoints.hit("mid_step", step)  # Dispatched, not finished (docs/faults.md).
        window_steps += 1
        progress.update(1)
        if step % config.log_every_steps == 0 or step == total_steps:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          _check_finite(step, metrics)
          elapsed = time.perf_counter() - window_start
          metrics.update({
              "frames_per_second_per_device": window_steps * frames_per_step / elapsed
                                              / jax.device_count(),
              "num_devices": jax.device_count(), "num_processes": jax.process_count(),
              "epoch": step / steps_per_epoch})
          with _storage_faults(f"the TensorBoard events in {workdir} could not be written at "
                               f"step {step}", ckpt):
            writer.write_scalars(step, metrics)
          if jsonl:
            with _storage_faults(f"{jsonl.path} could not be written at step {step}", ckpt,
                                 "the file keeps its previous content"):
              jsonl.write(step, metrics)
          last = metrics
          window_start, window_steps = time.perf_counter(), 0
        stop = sigterm.received or ckpt.reached_preemption(step)
        if ckpt.should_save(step) or step == total_steps or stop:
          # Never save a state that a non-finite step produced.
          _check_finite(step, {k: float(v) for k, v in jax.device_get(metrics).items()})
          paused = time.perf_counter()
          ckpt.save(step, state, _metadata(config, step, steps_per_epoch, data))
          failpoints.hit("final_save" if step == total_steps else "async_save", step)
          window_start += time.perf_counter() - paused  # Throughput excludes checkpointing.
        if stop:
          stopped = True
          logging.warning("stopping at step %d on %s; the checkpoint is saved",
                          step, "SIGTERM" if sigterm.received else "preemption")
          break
  except BaseException as e:
    failure = e
    raise
  finally:
    # Dropped explicitly, so that the reader's threads end before the final save is awaited. (The
    # destructor's stall of up to a minute came from tf.data's autotuning thread, now off:
    # input_pipeline._options, docs/training.md.)
    del batches
    progress.close()
    # ckpt.close waits for the save in flight: its storage fault (a StorageError) is raised here.
    # After another error, theirs are only logged, so that the first error is the one reported.
    for finish in (ckpt.close, functools.partial(_flush, writer, workdir, ckpt)):
      try:
        finish()
      except Exception as e:  # pylint: disable=broad-except
        if failure is None:
          raise
        logging.warning("while stopping after %s: %s: %s", type(failure).__name__,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
  if eval_split and not stopped:
    output_dir = os.path.join(workdir, "eval", eval_split)
    report = evaluate.evaluate(config, ckpt.directory, output_dir, eval_split)
    logging.info("evaluated split %s: %s", eval_split, os.path.join(output_dir, "metrics.json"))
    last = dict(last, eval=report)
  return last


def metric_writer(workdir: str, enabled: bool = True):
  """clu's default writer: the log, plus (when `enabled`) TensorBoard event files in `workdir`.

  Built here rather than by `create_default_writer(workdir)`, which first makes `workdir` an
  etils.epath Path: that fails for ram:// (the scheme the tests use for what TensorFlow writes).
  The events go through TensorFlow's file system
  (`tf.summary.create_file_writer`), so a gs:// workdir is written by TensorFlow's GCS client as in
  big_vision; config.tensorboard=False leaves the log only (no TensorFlow writer is made).
  """
  if not enabled:
    return metric_writers.create_default_writer(just_logging=True)
  from clu.metric_writers import summary_writer  # pylint: disable=g-import-not-at-top
  return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(),
                                          summary_writer.SummaryWriter(workdir)])


def _flush(writer, workdir: str, ckpt) -> None:
  with _storage_faults(f"the TensorBoard events in {workdir} could not be written", ckpt):
    writer.flush()


@contextlib.contextmanager
def _storage_faults(what: str, ckpt, note: str = ""):
  """A storage fault (full, read-only, ...) inside becomes a StorageError: `what`, the fault, and
  the newest complete checkpoint; any other error passes unchanged."""
  try:
    yield
  except checkpointing.StorageError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (TensorFlow raises its own types)
    reason = checkpointing.storage_fault(e)
    if reason is None:
      raise
    raise checkpointing.StorageError(
        f"{what}: {reason}{f' ({note})' if note else ''}; {ckpt.intact()}") from e


def _progress(start: int, total: int, enabled: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  # Steps are dispatched asynchronously, so the bar advances in bursts; the average rate since the
  # start (smoothing=0) gives a steady ETA where tqdm's default moving average swung 2-7 minutes.
  return tqdm(total=total, initial=start, disable=not enabled, desc="train", unit="step",
              dynamic_ncols=True, smoothing=0)
