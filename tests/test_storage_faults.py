"""Storage faults through scripts/train.py: a full disk while a checkpoint is saved (Orbax fails in
its background thread) or while train_metrics.jsonl is written, and a read-only workdir. Each
ends with one `error:` line naming the folder or file, the fault, the step and the newest complete
checkpoint; no file of that checkpoint changes; and once space returns the same command resumes
from it.

The workdir is a small tmpfs (we run as root in CI: `mount -t tmpfs -o size=...`), enlarged with
`remount` when space returns and made read-only with `remount,ro` (root ignores chmod). Where
mount is not permitted, the checkpoint case runs under RLIMIT_FSIZE instead (SIGXFSZ ignored, so a
write past the limit fails with EFBIG, "file too large") and the other two are skipped, saying
so (HTT_TEST_NO_MOUNT=1 forces that fallback where mount works). One trained workdir (2 steps, a checkpoint at step 2)
is copied into each case's tmpfs."""

import contextlib
import os
import resource
import shutil
import signal
import subprocess

import pytest

from conftest import ROOT, prepare_tiny_synthetic
from htt_jax import fault_campaign
from process_utils import env_for, file_hashes, read_metrics, run_processes, tail

TIMEOUT = 600
SMALL_MB = 200  # the trained workdir (~146 MB, mostly the step-2 checkpoint) and ~50 MB free


def _command(data_dir, workdir, steps, every=2):
  return fault_campaign.train_command(str(data_dir), str(workdir), steps, every)


def _run(command, log, preexec_fn=None):
  """Exit code; `preexec_fn` for the RLIMIT_FSIZE fallback."""
  if preexec_fn is None:
    return run_processes([command], [log], env_for(), TIMEOUT)[0]
  with open(log, "w") as f:
    proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env_for(), cwd=ROOT,
                          timeout=TIMEOUT, preexec_fn=preexec_fn, check=False)
  return proc.returncode


def _last_line(log):
  """The run's one `error:` line (htt_jax/cli.py). Orbax may log the failed save's futures again
  while the interpreter exits, after it, so it is not always the file's last line."""
  errors = [line for line in tail(log, 10**6).splitlines() if line.startswith("error:")]
  assert len(errors) == 1, tail(log)
  return errors[0]


@contextlib.contextmanager
def _tmpfs(path, size_mb):
  """A tmpfs of `size_mb` at `path`, or None where mount is not permitted (or HTT_TEST_NO_MOUNT is
  set, to run the fallback where mount works)."""
  os.makedirs(path)
  mounted = not os.environ.get("HTT_TEST_NO_MOUNT") and subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
      capture_output=True, check=False).returncode == 0
  try:
    yield path if mounted else None
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(path)], check=True)


def _remount(path, options):
  subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def _fill(folder, leave=0):
  """Writes a file into `folder` until the disk is full, then frees `leave` bytes; returns its
  path."""
  filler = os.path.join(folder, "filler")
  with open(filler, "wb") as f:
    try:
      while True:
        f.write(b"\0" * (1 << 20))
        f.flush()
    except OSError:
      pass
  with contextlib.suppress(OSError), open(filler, "ab") as f:  # the last partial megabyte
    while True:
      f.write(b"\0" * 4096)
      f.flush()
  os.truncate(filler, os.path.getsize(filler) - leave)
  return filler


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return prepare_tiny_synthetic(tmp_path_factory.mktemp("storage_faults_data"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A workdir of 2 steps with a checkpoint at step 2 (the one every case must leave intact)."""
  workdir = tmp_path_factory.mktemp("storage_faults_run") / "run"
  log = workdir.parent / "trained.log"
  assert _run(_command(data_dir, workdir, steps=2), log) == 0, tail(log)
  return workdir


def _resumes_to_the_end(data_dir, workdir, log):
  """Space is back: the same command resumes from step 2 and ends at step 4, each step logged
  once."""
  assert _run(_command(data_dir, workdir, steps=4), log) == 0, tail(log)
  assert "resumed from step 2" in tail(log, 10**6)
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())[-1] == 4
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]


def _ignore_sigxfsz_and_limit(size_bytes):
  def preexec():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_bytes, size_bytes))
  return preexec


def test_disk_full_while_saving_a_checkpoint(data_dir, trained, tmp_path):
  with _tmpfs(tmp_path / "disk", SMALL_MB) as disk:
    root = disk or tmp_path
    workdir = shutil.copytree(trained, root / "run")
    before = file_hashes(workdir / "checkpoints" / "2")
    log = tmp_path / "full.log"
    # Step 4's checkpoint does not fit: ENOSPC on the tmpfs; under the fallback, EFBIG from
    # its 80 MB data file (the limit is above every other file a run writes).
    preexec = None if disk else _ignore_sigxfsz_and_limit(40 << 20)
    assert _run(_command(data_dir, workdir, steps=4), log, preexec) == 1, tail(log)
    reason = "no space left on device" if disk else "file too large (a file size limit)"
    assert _last_line(log) == (
        f"error: checkpoint step 4 could not be saved in {workdir / 'checkpoints'}: {reason}; "
        "the newest complete checkpoint, step 2, is intact: once the storage is fixed, rerunning "
        "the same command resumes from it"), tail(log)
    assert file_hashes(workdir / "checkpoints" / "2") == before
    assert sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == ["2"]
    if disk:
      _remount(disk, "size=512m")
    _resumes_to_the_end(data_dir, workdir, tmp_path / "resumed.log")
    assert not [n for n in os.listdir(workdir / "checkpoints") if "tmp" in n]  # cleaned up


def test_disk_full_while_writing_metrics(data_dir, trained, tmp_path):
  with _tmpfs(tmp_path / "disk", SMALL_MB) as disk:
    if disk is None:
      pytest.skip("mount is not permitted here: only the RLIMIT_FSIZE checkpoint case runs")
    workdir = shutil.copytree(trained, disk / "run")
    before = file_hashes(workdir / "checkpoints" / "2")
    metrics = (workdir / "train_metrics.jsonl").read_bytes()
    # One page free: the TensorBoard events file takes it for its first event when the writer is
    # made; with no checkpoint before the end (every 1000), the next write of the run, and the
    # first to meet the full disk, is step 3's train_metrics.jsonl.
    filler = _fill(disk, leave=4096)
    log = tmp_path / "full.log"
    assert _run(_command(data_dir, workdir, steps=4, every=1000), log) == 1, tail(log)
    assert _last_line(log) == (
        f"error: {workdir / 'train_metrics.jsonl'} could not be written at step 3: no space left "
        "on device (the file keeps its previous content); the newest complete checkpoint, step "
        "2, is intact: once the storage is fixed, rerunning the same command resumes from it"), \
        tail(log)
    assert file_hashes(workdir / "checkpoints" / "2") == before
    assert (workdir / "train_metrics.jsonl").read_bytes() == metrics
    os.remove(filler)
    _remount(disk, "size=512m")  # and room for step 4's checkpoint
    _resumes_to_the_end(data_dir, workdir, tmp_path / "resumed.log")


def test_a_read_only_workdir_stops_before_compiling(data_dir, trained, tmp_path):
  with _tmpfs(tmp_path / "disk", SMALL_MB) as disk:
    if disk is None:
      pytest.skip("mount is not permitted here (and root ignores chmod)")
    workdir = shutil.copytree(trained, disk / "run")
    before = file_hashes(workdir)
    _remount(disk, "ro")
    log = tmp_path / "ro.log"
    assert _run(_command(data_dir, workdir, steps=4), log) == 1, tail(log)
    line = _last_line(log)
    assert line.startswith(f"error: cannot write to {workdir} ") and "Read-only file system" in line
    assert "compiled the train step" not in tail(log, 10**6)
    assert file_hashes(workdir) == before
