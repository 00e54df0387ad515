"""train_metrics.jsonl after a kill (htt_jax/metrics_log.py): the rerun's repair leaves the file of
an uninterrupted run, and readers skip a torn last line. Hand-written files, no training
(test_train.py's resume test covers the repair inside train_and_evaluate)."""

import json

import pytest

from htt_jax import metrics_log


def _lines(*steps):
  return "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in steps)


def test_a_torn_line_and_the_steps_after_the_checkpoint_are_cut(tmp_path, caplog):
  # Checkpoint at step 2; steps 3 and 4 were logged, then the kill tore step 5's line.
  path = tmp_path / metrics_log.FILE_NAME
  torn = '{"step": 5, "lo'
  path.write_text(_lines(1, 2, 3, 4) + torn)
  metrics_log.repair(str(path), 2)
  assert path.read_text() == _lines(1, 2)
  assert [r["step"] for r in metrics_log.read(str(path))] == [1, 2]
  assert f"{path}: cut a torn last line ({len(torn)} bytes)" in caplog.text
  assert f"{path}: dropped 2 lines of steps after step 2" in caplog.text
  assert [p.name for p in tmp_path.iterdir()] == [metrics_log.FILE_NAME]  # no temporary left


def test_a_last_line_that_is_not_json_is_torn_too(tmp_path):
  path = tmp_path / metrics_log.FILE_NAME
  path.write_text(_lines(1, 2) + "\0\0\0\n")  # What a crash can leave after the last write.
  assert [r["step"] for r in metrics_log.read(str(path))] == [1, 2]
  metrics_log.repair(str(path), 2)
  assert path.read_text() == _lines(1, 2)


def test_a_whole_file_is_left_as_it_is(tmp_path):
  path = tmp_path / metrics_log.FILE_NAME
  path.write_text(_lines(1, 2, 3))
  before = path.stat()
  metrics_log.repair(str(path), 3)
  metrics_log.repair(str(path), 7)  # Steps the run has not logged yet: nothing to drop.
  assert path.read_text() == _lines(1, 2, 3)
  assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  metrics_log.repair(str(tmp_path / "absent.jsonl"), 3)  # A first run: no file, none made.
  assert not (tmp_path / "absent.jsonl").exists()
  assert metrics_log.read(str(tmp_path / "absent.jsonl")) == []


def test_a_fresh_start_drops_every_line(tmp_path):
  # Killed before the first checkpoint: the rerun starts at step 0 and logs from step 1 again.
  path = tmp_path / metrics_log.FILE_NAME
  path.write_text(_lines(1, 2))
  metrics_log.repair(str(path), 0)
  assert path.read_text() == ""


def test_a_bad_line_before_the_last_is_an_error(tmp_path):
  path = tmp_path / metrics_log.FILE_NAME
  path.write_text(_lines(1) + '{"step": 2, "lo' + _lines(3, 4))  # torn, then appended to
  with pytest.raises(ValueError, match=r"line 2 is not JSON"):
    metrics_log.read(str(path))
  with pytest.raises(ValueError, match=r"line 2 is not JSON"):
    metrics_log.repair(str(path), 3)


def test_the_writer_replaces_the_whole_file_at_each_step(tmp_path, monkeypatch):
  # A rerun resuming from step 2 after a kill that left step 3's line and a torn step 4.
  path = tmp_path / metrics_log.FILE_NAME
  path.write_text(_lines(1, 2, 3) + '{"step": 4, "lo')
  writer = metrics_log.Writer(str(path), 2)
  assert path.read_text() == _lines(1, 2)  # repaired before the first step
  inode = path.stat().st_ino
  writer.write(3, {"loss": 1.0 / 3})
  assert path.read_text() == _lines(1, 2, 3)
  assert path.stat().st_ino != inode  # a new file renamed over the old one, not an append

  # A failure half-way through a write (what the metrics_write failpoint's SIGKILL interrupts)
  # leaves the previous complete file; a later write starts again from the writer's lines.
  def fail(name, step):
    assert (name, step) == ("metrics_write", 4)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(metrics_log.failpoints, "hit", fail)
  with pytest.raises(OSError, match="No space"):
    writer.write(4, {"loss": 1.0 / 4})
  assert path.read_text() == _lines(1, 2, 3)
  assert [p.name for p in tmp_path.iterdir()] == [metrics_log.FILE_NAME]  # temporary removed
  monkeypatch.undo()
  writer.write(4, {"loss": 1.0 / 4})
  assert path.read_text() == _lines(1, 2, 3, 4)
