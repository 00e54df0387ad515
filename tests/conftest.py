"""Shared test fixtures: configs loaded the way scripts load them, and small random batches."""

import atexit
import importlib.util
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One persistent XLA cache for the whole session, this process and the training processes the tests
# start (they inherit the environment): many tests compile the same train step (the smoke model),
# and compiling dominates their time on a 2-core CPU. Set before any test module imports JAX.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="htt_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA:CPU's YNNPACK fusions off (bfloat16 gives NaNs with them; cpu_flags.py): importing htt_jax
# sets no flag, so the session does, before JAX starts; the processes tests start inherit it.
from htt_jax import cpu_flags  # noqa: E402  (imports no JAX)

cpu_flags.set_safe_default()
# glibc's malloc as it is for the session and the processes it starts: the one arena that scripts
# get (cpu_flags.configure_malloc) makes compiling slower, and the tests mostly compile
# (tests/test_model.py 73 s against 60 s with it, 2026-12-06).
os.environ.setdefault(cpu_flags.MALLOC_ENV, "glibc")

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The files whose tests take longest, slowest first (seconds summed over a file's tests on the
# 2-core AVX-512 CPU, 2026-12-06, `--durations=0` under `-n 2`: 271 parallel, 197 multihost, 135
# gcs, 129 losses_and_steps, 122 fault_campaign, 107 storage_faults, 101 train, 94 benchmark, 93
# preemption, 77 model, 71 resume_guard, 63 input_pipeline; every other file under 50). `make
# test` hands whole files to its 2 workers in collection order (`--dist loadfile
# --no-loadscope-reorder`); xdist's own order (files with the most tests first) left these
# few-test files for the end, one worker running them for minutes while the other idled.
_SLOWEST_FILES = ("test_parallel.py", "test_multihost.py", "test_gcs.py",
                  "test_losses_and_steps.py", "test_fault_campaign.py", "test_storage_faults.py",
                  "test_train.py", "test_benchmark.py", "test_preemption.py", "test_model.py",
                  "test_resume_guard.py", "test_input_pipeline.py")


def pytest_collection_modifyitems(config, items):
  """The slowest files first (above); the rest, and the tests inside every file, keep their order."""
  del config
  rank = {name: i for i, name in enumerate(_SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def load_config(name: str, arg=None):
  """configs/<name>.py's get_config(arg), as config_flags would load it."""
  spec = importlib.util.spec_from_file_location(f"config_{name}", ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def random_batch(config, batch_size=2, seed=0, valid_frames=None):
  """A batch with the model's input and label keys; valid_frames[b] frames valid in clip b."""
  rng = np.random.default_rng(seed)
  t_clip = config.model.num_frames
  height, width = config.dataset.image_size
  joints = config.model.num_joints
  intrinsics = np.array([[200.0, 0, width / 2 - 3], [0, 201.0, height / 2 + 2], [0, 0, 1]],
                        np.float32)
  not_padding = np.ones((batch_size, t_clip), np.float32)
  if valid_frames is not None:
    for b, n in enumerate(valid_frames):
      not_padding[b, n:] = 0
  joints3d = np.stack([rng.uniform(-0.1, 0.1, (batch_size, t_clip, joints)),
                       rng.uniform(-0.1, 0.1, (batch_size, t_clip, joints)),
                       rng.uniform(0.3, 0.6, (batch_size, t_clip, joints))], -1).astype(np.float32)
  uvw = np.einsum("ij,btkj->btki", intrinsics, joints3d)
  joints25d = np.concatenate([uvw[..., :2] / uvw[..., 2:], joints3d[..., 2:]], -1)
  return dict(
      image=rng.integers(0, 256, (batch_size, t_clip, height, width, 3), dtype=np.uint8),
      intrinsics=np.broadcast_to(intrinsics, (batch_size, t_clip, 3, 3)).copy(),
      not_padding=not_padding,
      joints25d=joints25d.astype(np.float32),
      joints3d=joints3d,
      object=rng.integers(0, config.model.num_objects, (batch_size, t_clip)).astype(np.int32),
      action=rng.integers(0, config.model.num_actions, (batch_size,)).astype(np.int32),
  )


@pytest.fixture(scope="session")
def smoke_config():
  return load_config("smoke")


def prepare_tiny_synthetic(out, splits=("train",), num_frames=8, window=8, **writer_options) -> str:
  """4 synthetic videos at 72x128 (seed 3) written by prepare_data's writer into `out`: the small
  dataset the training-process tests share (T and t as given, spacing 2); returns `out`."""
  from data_pipeline import synthetic, writer  # pylint: disable=g-import-not-at-top
  source = synthetic.SyntheticConfig(seed=3, num_videos=4, image_size=(72, 128))
  for split in splits:
    writer.prepare_split(synthetic.iter_videos(source, split), str(out), split,
                         num_frames=num_frames, window=window, spacing=2,
                         vocabulary=synthetic.load_vocabulary(source), dataset_name="synthetic",
                         image_size=(72, 128), progress=False, **writer_options)
  return str(out)
