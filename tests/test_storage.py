"""htt_jax/storage.py: every output is replaced atomically and keeps ordinary permissions."""

import json
import os
import stat

import numpy as np
import pytest

from htt_jax import storage


@pytest.fixture
def umask_022():
  previous = os.umask(0o022)
  yield
  os.umask(previous)


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(folder, keep):
  return sorted(set(os.listdir(folder)) - set(keep))


def test_every_writer_leaves_0644_under_umask_022(tmp_path, umask_022):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(1, 1))
  ax.plot([0, 1], [0, 1])
  writers = {
      "a.bin": lambda p: storage.write_bytes(p, b"\x00\x01"),
      "a.txt": lambda p: storage.write_text(p, "text\n"),
      "a.json": lambda p: storage.write_json(p, {"b": 1}),
      "a.npz": lambda p: storage.save_npz(p, {"x": np.arange(3)}),
      "a.png": lambda p: storage.save_figure(p, fig),
  }
  for name, write in writers.items():
    path = tmp_path / name
    write(str(path))
    assert _mode(path) == 0o644, name
  plt.close(fig)
  assert _leftovers(tmp_path, writers) == []
  assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_permissions_follow_the_umask(tmp_path):
  previous = os.umask(0o077)
  try:
    storage.write_text(str(tmp_path / "private.txt"), "x")
  finally:
    os.umask(previous)
  assert _mode(tmp_path / "private.txt") == 0o600


def test_json_round_trip_and_layout(tmp_path):
  value = {"z": [1, 2.5, None], "a": {"nested": "é"}}
  path = tmp_path / "v.json"
  storage.write_json(str(path), value)
  assert json.loads(path.read_text("utf-8")) == value
  text = path.read_text("utf-8")
  assert text.index('"a"') < text.index('"z"') and text.endswith("}\n")
  storage.write_json(str(path), value, indent=1, sort_keys=False)
  assert path.read_text("utf-8") == json.dumps(value, indent=1) + "\n"


def test_npz_round_trip(tmp_path):
  arrays = {"f": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32),
            "s": np.array(["train/0001", "test/0042"]), "i": np.arange(5, dtype=np.int64)}
  path = tmp_path / "sub" / "p.npz"  # the folder is created
  storage.save_npz(str(path), arrays)
  with np.load(path, allow_pickle=False) as npz:
    assert sorted(npz.files) == sorted(arrays)
    for key, expected in arrays.items():
      np.testing.assert_array_equal(npz[key], expected)
      assert npz[key].dtype == expected.dtype


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "metrics.json"
  storage.write_json(str(path), {"old": True})
  before = path.read_bytes()

  def half_then_fail(f):
    f.write(b'{"new": ')
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    storage.write_with(str(path), half_then_fail)
  with pytest.raises(TypeError):  # not serialisable: fails while writing
    storage.write_json(str(path), {"new": object()})
  with pytest.raises(KeyboardInterrupt):
    with storage.replacing(str(path)) as temporary:
      with open(temporary, "wb") as f:
        f.write(b"partial")
      raise KeyboardInterrupt
  assert path.read_bytes() == before
  assert _leftovers(tmp_path, ["metrics.json"]) == []


def test_replacing_writes_through_a_file_name(tmp_path, umask_022):
  path = tmp_path / "archive.zip"
  path.write_bytes(b"old")
  with storage.replacing(str(path)) as temporary:
    assert os.path.dirname(temporary) == str(tmp_path)
    assert os.path.basename(temporary).startswith(".archive.zip.")
    with open(temporary, "wb") as f:
      f.write(b"new")
    assert path.read_bytes() == b"old"  # not visible before the block ends
  assert path.read_bytes() == b"new"
  assert _mode(path) == 0o644
  assert _leftovers(tmp_path, ["archive.zip"]) == []


def test_no_jax_or_tensorflow_import():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys; from htt_jax import storage; "
          "print(sorted(m for m in ('jax', 'tensorflow', 'torch') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
