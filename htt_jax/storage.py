"""The one way this project writes an output file: atomically, with ordinary permissions.

Every output (metrics JSON, text tables, .npz arrays, PNG figures, dataset manifests and plans)
goes through `replacing`: the bytes are written under a hidden temporary name in the destination
folder and renamed over the destination only once complete, so a reader sees either the old file
or the new one, never half of one, and a failure leaves neither a torn file nor a temporary behind.

The temporary file is created with mode 0o666 and the kernel applies the process umask, so the
result has the permissions any ordinary file would get (0644 under umask 022). `tempfile.mkstemp`
would give 0600, which hides results from the other users of a shared machine.

Imports only the standard library and NumPy: data_pipeline/writer.py imports it, and scripts load
it before JAX is configured.
"""

import contextlib
import io
import json
import os
import secrets
from typing import Any, Callable, Iterator, Mapping

import numpy as np


def _create_temporary(path: str) -> str:
  """Creates an empty, unique, hidden sibling of `path` with mode 0o666 & ~umask."""
  directory, name = os.path.split(os.path.abspath(path))
  while True:
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
      fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      continue
    os.close(fd)
    return temporary


@contextlib.contextmanager
def replacing(path: str, make_dirs: bool = True) -> Iterator[str]:
  """Yields a temporary path to write; on success it replaces `path`, on failure it is removed.

  For writers that want a file name rather than a file object (tf.io.TFRecordWriter, zipfile).
  """
  directory = os.path.dirname(os.path.abspath(path))
  if make_dirs:
    os.makedirs(directory, exist_ok=True)
  temporary = _create_temporary(path)
  try:
    yield temporary
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temporary)
    raise


def write_with(path: str, write: Callable[[io.BufferedWriter], Any]) -> None:
  """Calls `write(f)` on a binary file that becomes `path` once `write` returns (and is synced)."""
  with replacing(path) as temporary:
    with open(temporary, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())


def write_bytes(path: str, data: bytes) -> None:
  write_with(path, lambda f: f.write(data))


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any, indent: int = 2, sort_keys: bool = True) -> None:
  """JSON with a final newline; `indent`/`sort_keys` let each format keep its historic layout."""
  write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """An uncompressed .npz (np.savez) of `arrays`, loadable with np.load."""
  write_with(path, lambda f: np.savez(f, **arrays))


def save_figure(path: str, fig, **savefig_kwargs) -> None:
  """A Matplotlib figure in the format the extension of `path` names (e.g. .png)."""
  fmt = os.path.splitext(path)[1].lstrip(".").lower() or None
  write_with(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))
