"""`W/train_metrics.jsonl`: one JSON object per logged step, each step once, in order; written by
process 0 of train.py through `Writer`, read by everyone through `read`.

`Writer` holds the file's lines and, at each logged step, rewrites the whole file atomically
(storage.write_with: a temporary sibling, then a rename; on Cloud Storage one object replaced
whole, since objects cannot be appended to). A kill at any moment leaves the previous complete file
or the new one, never a torn line; rewriting costs O(lines) per log step, ~150 bytes a line.

Older versions appended line by line, so a kill could tear the last line; and in any version the
steps logged after the last checkpoint are trained and logged again by the rerun. So the writer
starts from `repair` (each step once: whole lines of steps 1..the resumed step), and `read` ignores
a torn last line (a file left by an older version).

Imports only the standard library, absl logging, failpoints and storage (local files and URLs:
a gs:// workdir's file is read from the store's current listing, not gcsfs's cache): tests read
the file through it.
"""

import json
import os

from absl import logging

from htt_jax import failpoints, storage

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
                       "file can be torn by a crash") from None
    records.append(record)
    end += len(line) + 1
  return records, end


def read(path: str) -> list:
  """The records of the file's whole lines ([] when there is no file yet)."""
  if not storage.exists(path):
    return []
  return _parse(path, storage.read_bytes(path))[0]


def _kept(path: str, step: int):
  """(bytes of the whole lines of steps 1..`step`, whether the file needs rewriting to hold just
  them); warns about what is cut. (b'', False) when there is no file."""
  if not storage.exists(path):
    return b"", False
  data = storage.read_bytes(path)
  records, end = _parse(path, data)
  if end < len(data):
    logging.warning("%s: cut a torn last line (%d bytes), left by a run killed while writing it",
                    path, len(data) - end)
  kept = [r for r in records if r["step"] <= step]
  if len(kept) < len(records):
    logging.warning("%s: dropped %d lines of steps after step %d, the step this run resumes from "
                    "(they are logged again as they are retrained)", path,
                    len(records) - len(kept), step)
  # From the kept lines' own bytes, so they stay byte-identical.
  lines = data[:end].split(b"\n")[:-1]
  text = b"".join(line + b"\n" for line, r in zip(lines, records) if r["step"] <= step)
  return text, end < len(data) or len(kept) < len(records)


def repair(path: str, step: int) -> bytes:
  """Makes the file the log of steps 1..`step` (the step the run resumes from): a torn last line
  is cut and the lines of steps after `step` (logged before the kill but not checkpointed; the
  rerun logs them again) are dropped. The result is written atomically; a file that needs neither
  is not touched. Returns the file's content now."""
  text, changed = _kept(path, step)
  if changed:
    storage.write_bytes(path, text)
  return text


class Writer:
  """The log of a run resuming from `start_step`: `write(step, metrics)` adds one line and replaces
  the whole file atomically. The file is repaired (see `repair`) when the writer is made."""

  def __init__(self, path: str, start_step: int):
    self.path = path
    self._text = repair(path, start_step)

  def write(self, step: int, metrics: dict) -> None:
    text = self._text + (json.dumps({"step": step, **metrics}) + "\n").encode()
    half = len(text) // 2

    def write_halves(f):
      f.write(text[:half])
      failpoints.hit("metrics_write", step)  # A kill here leaves only a hidden temporary.
      f.write(text[half:])

    storage.write_with(self.path, write_halves)
    self._text = text
