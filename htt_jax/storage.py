"""The one way this project writes an output file (atomically, with ordinary permissions), and the
few file operations the rest of the code needs on a path a user gave, local or a URL.

Every output (metrics JSON, text tables, .npz arrays, PNG figures, dataset manifests and plans)
goes through `replacing`, so a reader sees either the old file or the new one, never half of one,
and a failure leaves neither a torn file nor a temporary behind:
- a local path: the bytes are written under a hidden temporary name in the destination folder,
  synced, and renamed over the destination. The temporary file is created with mode 0o666 and the
  kernel applies the process umask, so the result has the permissions any ordinary file would get
  (0644 under umask 022); `tempfile.mkstemp` would give 0600, which hides results from the other
  users of a shared machine.
- a URL (gs://bucket/..., or a TensorFlow-only scheme such as ram://): an object store has no
  folders and no atomic rename, and an upload cut short may still be committed by the client when
  it closes the stream. So the bytes are first written to a local temporary file, uploaded under
  a hidden temporary name next to the destination, and only then copied over the destination
  (the store's rename: copy, then delete) — the destination name only ever holds a complete
  object. A process killed mid-upload leaves at most a hidden `.NAME.HEX.tmp` object.

Paths go through `etils.epath` (what Orbax and TFDS use): with `EPATH_USE_TF=false` it reaches
gs:// through gcsfs (which honours `STORAGE_EMULATOR_HOST`), otherwise through TensorFlow. Schemes
epath does not know (ram://, TensorFlow's in-memory file system, which the tests use for the code
paths TensorFlow itself reads and writes) go through `tf.io.gfile`. docs/launch.md ("Cloud
Storage") says what works where.

Imports only the standard library and NumPy at module level (epath, and TensorFlow for its own
schemes, only when a URL is used): data_pipeline/writer.py imports it, and scripts load it before
JAX is configured.
"""

import contextlib
import io
import json
import os
import secrets
import shutil
import sys
import tempfile
from typing import Any, Callable, Iterator, List, Mapping

import numpy as np

# The schemes etils.epath handles itself (its gpath module); any other URL is TensorFlow's.
_EPATH_SCHEMES = ("gs", "s3", "az", "hf")


def is_url(path) -> bool:
  """True for 'scheme://...' (gs://, ram://, ...), False for a local path."""
  return "://" in os.fspath(path)


def _scheme(path: str) -> str:
  return path.split("://", 1)[0]


def _is_tensorflow_url(path: str) -> bool:
  return is_url(path) and _scheme(path) not in _EPATH_SCHEMES


class _GFile:
  """The few epath.Path operations used here, on tf.io.gfile, for schemes epath lacks (ram://)."""

  def __init__(self, path: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._gfile, self._path = tf.io.gfile, path

  def exists(self) -> bool:
    return self._gfile.exists(self._path)

  def is_dir(self) -> bool:
    return self._gfile.isdir(self._path)

  def listdir(self) -> List[str]:
    return [name.rstrip("/") for name in self._gfile.listdir(self._path)]

  def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
    del parents, exist_ok
    self._gfile.makedirs(self._path)

  def unlink(self) -> None:
    self._gfile.remove(self._path)

  def size(self) -> int:
    return self._gfile.stat(self._path).length

  def open(self, mode: str):
    return self._gfile.GFile(self._path, mode)

  def replace(self, target: str) -> None:
    self._gfile.rename(self._path, target, overwrite=True)


def _path(path):
  """An epath.Path (local or gs://...) or, for TensorFlow-only schemes, a _GFile."""
  path = os.fspath(path)
  if _is_tensorflow_url(path):
    return _GFile(path)
  from etils import epath  # pylint: disable=g-import-not-at-top
  if is_url(path) and "gcsfs" in sys.modules:
    # gcsfs (epath's client with EPATH_USE_TF=false) caches folder listings for the life of the
    # process and answers exists/stat from them, so an object written since by another client
    # (TensorFlow's shards, tensorstore's arrays, another host) would look missing. Queries here
    # are few; each starts from the store's current listing.
    from etils.epath import backend  # pylint: disable=g-import-not-at-top
    backend.fsspec_backend.fs(path).invalidate_cache()
  return epath.Path(path)


# ---------------------------------------------------------------------------------------------
# Reading and inspecting a user's path (local or URL): what callers need beyond os.path.join,
# which already joins URLs correctly ('gs://b/x' + 'y' -> 'gs://b/x/y').

def exists(path) -> bool:
  return _path(path).exists()


def isdir(path) -> bool:
  return _path(path).is_dir()


def listdir(path) -> List[str]:
  """The names in a folder (or under a URL prefix), unsorted; [] when there is none."""
  p = _path(path)
  if isinstance(p, _GFile):
    return p.listdir() if p.is_dir() else []
  return [child.name for child in p.iterdir()] if p.is_dir() else []


def size(path) -> int:
  p = _path(path)
  return p.size() if isinstance(p, _GFile) else p.stat().length


def read_bytes(path) -> bytes:
  with _path(path).open("rb") as f:
    return f.read()


def open_read(path):
  """A seekable binary file object reading `path`: for a URL, fetched in blocks as it is read
  (gcsfs's buffered file), so a reader that seeks (PyAV on a video) does not download it whole."""
  path = os.fspath(path)
  return open(path, "rb") if not is_url(path) else _path(path).open("rb")


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def remove(path) -> None:
  _path(path).unlink()


def rename(source, target) -> None:
  """Renames a file or a folder. Locally one atomic os.rename. On gs:// a folder is many objects
  and the store has no rename: each object is copied to the new name, then the old ones are
  deleted (gcsfs, through epath), so a process killed half-way leaves some objects under each
  name; `target` must not exist yet."""
  if not is_url(source):
    os.rename(source, target)
  else:
    _path(source).rename(os.fspath(target))


def makedirs(path) -> None:
  """Creates a local folder and its parents. A URL needs none: an object store has no folders
  (and gcsfs's makedirs would create a missing *bucket*, hiding a misspelt name)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)
  elif _is_tensorflow_url(os.fspath(path)):
    _path(path).mkdir()


def check_writable(directory) -> None:
  """Raises FileNotFoundError or PermissionError naming `directory` when an output cannot be
  written there (a missing bucket, no credentials, no permission, a file in the way), by writing
  and removing a small hidden object: scripts call it before anything is compiled."""
  directory = os.fspath(directory)
  probe = os.path.join(directory, f".htt_jax_write_check.{secrets.token_hex(4)}")
  try:
    write_bytes(probe, b"")
    remove(probe)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"cannot write to {directory}: its bucket or folder does not "
                            "exist") from e
  except Exception as e:  # pylint: disable=broad-except  (each client raises its own types)
    raise PermissionError(f"cannot write to {directory} ({type(e).__name__}: {_first_line(e)}): "
                          "check the path, the credentials (for gs://: gcloud auth "
                          "application-default login) and the permission to write") from e


def check_can_create(directory) -> None:
  """`check_writable` for a folder that outputs will be written to later, creating nothing now:
  locally the probe goes to the nearest folder that exists above `directory` (the missing ones are
  made when the first output is written), so a run that fails before writing leaves no empty
  folder behind. A URL has no folders to create: `check_writable` as it is."""
  directory = os.fspath(directory)
  if is_url(directory):
    check_writable(directory)
    return
  existing = os.path.abspath(directory)
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or existing == os.path.abspath(directory):
    # A file in the way: check_writable fails on it, naming `directory`, before creating anything.
    check_writable(directory)
    return
  try:
    check_writable(existing)
  except (FileNotFoundError, PermissionError) as e:
    raise type(e)(f"{e} (to create {directory} in it)") from e


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [""])[0][:300]


# ---------------------------------------------------------------------------------------------
# Writing (module docstring).

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


def _upload(local: str, url: str) -> None:
  """Copies the complete local file `local` to `url`: uploaded under a hidden temporary name, then
  renamed over `url` (module docstring); the temporary object is removed on failure."""
  directory, name = url.rsplit("/", 1)
  temporary = _path(f"{directory}/.{name}.{secrets.token_hex(4)}.tmp")
  try:
    with open(local, "rb") as src, temporary.open("wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 20)
    temporary.replace(url)
  except FileNotFoundError as e:
    with contextlib.suppress(Exception):
      temporary.unlink()
    raise FileNotFoundError(f"cannot write {url}: its bucket does not exist (or these "
                            "credentials cannot see it)") from e
  except BaseException:
    with contextlib.suppress(Exception):
      temporary.unlink()
    raise


@contextlib.contextmanager
def replacing(path: str, make_dirs: bool = True) -> Iterator[str]:
  """Yields a local temporary path to write; on success it replaces `path` (local or a URL, see
  the module docstring), on failure it is removed.

  For writers that want a file name rather than a file object (tf.io.TFRecordWriter, zipfile).
  """
  path = os.fspath(path)
  if is_url(path):
    if make_dirs:
      makedirs(path.rsplit("/", 1)[0])
    with tempfile.TemporaryDirectory(prefix="htt_jax_upload_") as folder:
      temporary = os.path.join(folder, path.rsplit("/", 1)[1])
      yield temporary
      _upload(temporary, path)
    return
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
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
  write_with(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))
