"""Running training processes from tests: deadlines, clean kills, and reading what they wrote."""

import hashlib
import os
import signal
import socket
import subprocess
import time

from conftest import ROOT
from htt_jax import metrics_log


def env_for(devices: int = 0) -> dict:
  """The environment of a test's training processes: CPU only, quiet TF, and the session's
  persistent XLA cache (conftest.py; the same programs then compile once per test session)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  if devices:  # scripts/train.py takes the CPU device count from XLA_FLAGS.
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={devices}").strip()
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_processes(commands, logs, env, timeout, while_running=None, stop_on_failure=True):
  """Runs the commands together (output to `logs`); returns their exit codes.

  `while_running(procs)` is called every 0.2 s. On the deadline (TimeoutError), or as soon as one
  fails when `stop_on_failure` (the others would wait for it in a collective), every process still
  running is killed with its process group; nothing outlives the call.
  """
  procs = []
  try:
    for command, log in zip(commands, logs):
      with open(log, "w") as f:
        procs.append(subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env,
                                      cwd=ROOT, start_new_session=True))
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
      if stop_on_failure and any(p.returncode not in (None, 0) for p in procs):
        break
      if time.monotonic() > deadline:
        raise TimeoutError(f"processes still running after {timeout} s; logs: {logs}")
      if while_running:
        while_running(procs)
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  return [p.returncode for p in procs]


def tail(path, chars: int = 3000) -> str:
  with open(path) as f:
    return f.read()[-chars:]


def read_metrics(workdir) -> list:
  """The complete lines of workdir/train_metrics.jsonl so far ([] before the first)."""
  return metrics_log.read(metrics_log.path_in(str(workdir)))


def file_hashes(root) -> dict:
  """{relative path: sha256} of every file under `root` (a new, removed or changed file shows)."""
  found = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return found
