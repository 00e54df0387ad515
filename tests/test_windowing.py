"""Storage windows reproduce the reference's training and evaluation clips
exactly (reference.md §3.4-3.5)."""

import numpy as np
import pytest

from data_pipeline import windowing

LENGTHS = [1, 2, 3, 31, 40, 255, 256, 257, 300, 513]
SETTINGS = [(128, 16, 2), (32, 16, 2), (16, 4, 3), (8, 8, 1), (4, 1, 2)]


def _cut_all(length, t_clip, t_win, spacing, all_train_offsets):
  """{start: (positions, not_padding)} and the start order, cut from the storage windows."""
  windows = windowing.storage_windows(length, t_clip, t_win, spacing)
  clips, order = {}, []
  for i, m in windowing.clip_order(windows, all_train_offsets):
    positions, not_padding = windowing.window_clip(windows[i], m, t_clip)
    start = int(positions[0])
    assert start not in clips, f"start {start} cut twice"
    clips[start] = positions, not_padding
    order.append(start)
  return clips, order


@pytest.mark.parametrize("t_clip,t_win,spacing", SETTINGS)
@pytest.mark.parametrize("length", LENGTHS)
def test_windows_reproduce_reference_clips(length, t_clip, t_win, spacing):
  for all_train_offsets in (True, False):
    clips, order = _cut_all(length, t_clip, t_win, spacing, all_train_offsets)
    if all_train_offsets:
      starts = windowing.reference_train_starts(length, t_clip, t_win, spacing)
    else:
      starts = windowing.reference_eval_starts(length, t_clip, spacing)
    # Same starts, in the reference's order (frames ascending), each clip frame for frame.
    assert order == list(starts)
    for start in starts:
      positions, not_padding = windowing.clip_positions(length, int(start), t_clip, spacing)
      np.testing.assert_array_equal(clips[start][0], positions, err_msg=f"start {start}")
      np.testing.assert_array_equal(clips[start][1], not_padding, err_msg=f"start {start}")


@pytest.mark.parametrize("t_clip,t_win,spacing", SETTINGS)
@pytest.mark.parametrize("length", LENGTHS)
def test_window_invariants(length, t_clip, t_win, spacing):
  windows = windowing.storage_windows(length, t_clip, t_win, spacing)
  stored = sum(len(w.positions) for w in windows)
  assert stored <= length * (t_clip + t_win - 1) / t_clip + 1e-9
  # Every frame is stored at least once; positions stay inside the video and in their parity.
  seen = np.zeros(length, bool)
  for w in windows:
    assert 1 <= len(w.positions) <= t_clip + t_win - 1
    assert 1 <= w.num_train_offsets <= min(t_win, len(w.positions))
    assert np.all(w.positions % spacing == w.parity)
    assert np.all(np.diff(w.positions) == spacing)
    assert w.positions[0] == w.parity + spacing * t_clip * w.block
    seen[w.positions] = True
  assert seen.all()
  starts = [w.start for w in windows]
  assert starts == sorted(starts)
  assert windowing.stored_frames(length, t_clip, t_win, spacing) == stored


def test_reference_counts():
  """reference.md §3.4: L=300 -> 64 training clips, L=40 -> 32; formula 32*floor(L/256) +
  min(32, L%256)."""
  assert windowing.count_clips(300, 128, 16, 2)[0] == 64
  assert windowing.count_clips(40, 128, 16, 2)[0] == 32
  for length in LENGTHS + [1000, 1024, 1055]:
    expected = 32 * (length // 256) + min(32, length % 256)
    assert windowing.count_clips(length, 128, 16, 2)[0] == expected
    assert len(windowing.reference_train_starts(length, 128, 16, 2)) == expected
    assert windowing.count_clips(length, 128, 16, 2)[1] == len(
        windowing.reference_eval_starts(length, 128, 2))


def test_reference_example_300_frames():
  """reference.md §3.5: start 0 -> frames 0, 2, ..., 254; start 256 -> 256..298 (22 valid) +
  106 copies."""
  positions, not_padding = windowing.clip_positions(300, 0, 128, 2)
  np.testing.assert_array_equal(positions, np.arange(0, 256, 2))
  assert not_padding.all()
  positions, not_padding = windowing.clip_positions(300, 256, 128, 2)
  np.testing.assert_array_equal(positions[:22], np.arange(256, 300, 2))
  assert (positions[22:] == 298).all() and not_padding.sum() == 22 and not_padding[:22].all()
  # Evaluation covers every raw frame exactly once (as valid frames).
  clips, _ = _cut_all(300, 128, 16, 2, all_train_offsets=False)
  valid = np.concatenate([p[n > 0] for p, n in clips.values()])
  np.testing.assert_array_equal(np.sort(valid), np.arange(300))


def test_storage_factor_long_video():
  length = 128 * 2 * 50
  stored = windowing.stored_frames(length, 128, 16, 2)
  assert stored <= length * 143 / 128
  assert stored > length  # the overlap really is stored


def test_bad_arguments():
  with pytest.raises(ValueError, match="t=17"):
    windowing.storage_windows(10, 16, 17, 2)
  with pytest.raises(ValueError, match="outside"):
    windowing.clip_positions(10, 10, 16, 2)
  assert windowing.storage_windows(0, 16, 4, 2) == []
