"""`W/train_metrics.jsonl`: one JSON object per logged step, appended by process 0 of train.py.

Appending is not atomic: a kill (SIGKILL, OOM, a lost node) during a write leaves a torn last line,
and the steps logged after the last checkpoint are trained and logged again by the rerun. So a
rerun calls `repair` before appending (the file is then exactly that of a run never interrupted:
each step once, in order), and every reader goes through `read`, which ignores a torn last line (a
reader may also meet the line the writer is writing now).

Imports only the standard library, absl logging and storage: tests read the file through it.
"""

import json
import os

from absl import logging

from htt_jax import storage

FILE_NAME = "train_metrics.jsonl"


def path_in(workdir: str) -> str:
  return os.path.join(workdir, FILE_NAME)


def _parse(path: str, data: bytes):
  """(records of the whole lines, the byte length they span); a last line without its newline or
  that is not JSON is torn and left out. A bad line before the last is not a crash's trace: error."""
  lines = data.split(b"\n")  # The last element is b"" when the file ends with a newline.
  records, end = [], 0
  for number, line in enumerate(lines[:-1], start=1):
    try:
      record = json.loads(line)
    except ValueError as e:
      if number == len(lines) - 1 and lines[-1] == b"":  # The last line, newline and all.
        break
      raise ValueError(f"{path}: line {number} is not JSON ({e}); only the last line of this "
                       "append-only file can be torn by a crash") from None
    records.append(record)
    end += len(line) + 1
  return records, end


def read(path: str) -> list:
  """The records of the file's whole lines ([] when there is no file yet)."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    return _parse(path, f.read())[0]


def repair(path: str, step: int) -> None:
  """Makes the file the log of steps 1..`step` (the step the run resumes from) before a run
  appends to it: a torn last line is cut and the lines of steps after `step` (logged before the
  kill but not checkpointed; the rerun logs them again) are dropped. The result is written
  atomically (storage.write_bytes); a file that needs neither is not touched."""
  if not os.path.exists(path):
    return
  with open(path, "rb") as f:
    data = f.read()
  records, end = _parse(path, data)
  if end < len(data):
    logging.warning("%s: cut a torn last line (%d bytes), left by a run killed while writing it",
                    path, len(data) - end)
  kept = [r for r in records if r["step"] <= step]
  if len(kept) < len(records):
    logging.warning("%s: dropped %d lines of steps after step %d, the step this run resumes from "
                    "(they are logged again as they are retrained)", path,
                    len(records) - len(kept), step)
  if end < len(data) or len(kept) < len(records):
    # From the kept lines' own bytes, so they stay byte-identical; one file, replaced whole.
    lines = data[:end].split(b"\n")[:-1]
    storage.write_bytes(path, b"".join(line + b"\n" for line, r in zip(lines, records)
                                       if r["step"] <= step))
