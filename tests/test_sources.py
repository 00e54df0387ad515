"""FPHA and H2O sources on tiny raw folders in the real layouts (tests/raw_layouts.py).

Expected values are recomputed here from the reference's constants (reference.md §3.1, §3.2), typed
again rather than imported from the sources, so a wrong constant in a source fails a test.
"""

import os
import pickle

import numpy as np
from PIL import Image
import pytest

from data_pipeline import fpha, h2o, image_io
import raw_layouts as rl

# reference.md §3.1: world -> colour camera (mm), intrinsics at 1920x1080, joint reorder.
FPHA_RT = np.array([[0.999988496304, -0.00468848412856, 0.000982563360594, 25.7],
                    [0.00469115935266, 0.999985218048, -0.00273845880292, 1.22],
                    [-0.000969709653873, 0.00274303671904, 0.99999576807, 3.902]])
FPHA_F, FPHA_C = (1395.749023, 1395.749268), (935.732544, 540.681030)
FPHA_REORDER = [0, 1, 6, 7, 8, 2, 9, 10, 11, 3, 12, 13, 14, 4, 15, 16, 17, 5, 18, 19, 20]
# reference.md §3.1 / §3.2: the stored 480x270 intrinsics the reference serves.
FPHA_K480 = [[348.93726, 0, 233.93314], [0, 348.93732, 135.17026], [0, 0, 1]]
H2O_F, H2O_C = (636.6593017578125, 636.251953125), (635.283881879317, 366.8740353496978)
H2O_K480 = [[238.74724, 0, 238.23146], [0, 238.59448, 137.57776], [0, 0, 1]]


@pytest.fixture(scope="module")
def fpha_root(tmp_path_factory):
  return rl.write_fpha(tmp_path_factory.mktemp("fpha"))


@pytest.fixture(scope="module")
def h2o_root(tmp_path_factory):
  return rl.write_h2o(tmp_path_factory.mktemp("h2o"))


def assert_colour(image, frame, size=(270, 480), tol=0):
  assert image.dtype == np.uint8 and image.shape == (*size, 3)
  diff = np.abs(image.astype(int) - np.array(rl.frame_colour(frame)))
  assert diff.max() <= tol, (frame, diff.max())


# ------------------------------------------------------------------------------------------ FPHA
def test_fpha_vocabulary(fpha_root):
  vocab = fpha.load_vocabulary(fpha_root)
  assert vocab["actions"] == ["open_juice_bottle", "charge_cell_phone", "close_juice_bottle",
                              "clean_glasses", "give_coin"]
  assert vocab["objects"] == ["juice_bottle", "charger", "glasses", "coin"]  # first appearance


def test_fpha_actions_are_numbered_by_row_as_in_the_reference(tmp_path, caplog):
  """reference.md §3.1: the reference parses the id column, then renumbers the actions in file
  order; a table whose ids are not 1..n in order keeps the rows' numbering, with a warning."""
  root = rl.write_fpha(tmp_path)
  table = root / "action_object_info.txt"
  header, *rows = table.read_text().splitlines()  # ids 1..5 in order
  table.write_text("\n".join([header, rows[1], rows[0], *rows[2:]]) + "\n")  # ids 2, 1, 3, 4, 5
  with caplog.at_level("WARNING"):
    vocab = fpha.load_vocabulary(root)
  assert vocab["actions"] == ["charge_cell_phone", "open_juice_bottle", "close_juice_bottle",
                              "clean_glasses", "give_coin"]
  assert vocab["objects"] == ["charger", "juice_bottle", "glasses", "coin"]
  assert "action id 2 is not the row's rank 1" in caplog.text
  videos = {v.video_id: v for v in fpha.iter_videos(root, "train")}
  assert videos["Subject_1/charge_cell_phone/1"].action == 0
  assert videos["Subject_2/open_juice_bottle/2"].action == 1
  assert set(videos["Subject_2/open_juice_bottle/2"].object.tolist()) == {1}


def test_fpha_train_annotations(fpha_root):
  videos = list(fpha.iter_videos(fpha_root, "train"))
  assert [v.video_id for v in videos] == ["Subject_1/charge_cell_phone/1",
                                          "Subject_2/open_juice_bottle/2"]
  assert [len(v) for v in videos] == [40, 37]
  assert [v.subject for v in videos] == ["Subject_1", "Subject_2"]
  assert [v.action for v in videos] == [1, 0]
  np.testing.assert_array_equal(videos[0].object, np.full(40, 1))
  np.testing.assert_array_equal(videos[1].object, np.zeros(37))
  np.testing.assert_array_equal(videos[1].frame_idx, np.arange(37))
  video = videos[0]
  assert video.hand_valid.shape == (40, 1) and video.hand_valid.all()
  np.testing.assert_allclose(video.intrinsics, FPHA_K480, rtol=1e-7)

  # One joint by hand: output joint 5 (index MCP) is native joint 2; frame 7.
  x, y, z = rl.fpha_world_mm(7)[2]
  cam = [r[0] * x + r[1] * y + r[2] * z + r[3] for r in FPHA_RT]
  np.testing.assert_allclose(video.joints3d[7, 5], np.array(cam) / 1000, rtol=1e-6)
  u = (FPHA_F[0] * cam[0] / cam[2] + FPHA_C[0]) / 4
  v = (FPHA_F[1] * cam[1] / cam[2] + FPHA_C[1]) / 4
  np.testing.assert_allclose(video.joints2d[7, 5], [u, v], rtol=1e-6)

  # All frames and joints.
  world = np.stack([rl.fpha_world_mm(f) for f in range(40)])[:, FPHA_REORDER]
  cam = world @ FPHA_RT[:, :3].T + FPHA_RT[:, 3]
  np.testing.assert_allclose(video.joints3d, cam / 1000, rtol=1e-6, atol=1e-7)
  uv = np.stack([FPHA_F[0] * cam[..., 0] / cam[..., 2] + FPHA_C[0],
                 FPHA_F[1] * cam[..., 1] / cam[..., 2] + FPHA_C[1]], -1) / 4
  np.testing.assert_allclose(video.joints2d, uv, rtol=1e-6)
  assert video.joints3d.dtype == video.joints2d.dtype == video.intrinsics.dtype == np.float32


def test_fpha_images_lazy_and_picklable(fpha_root):
  video = next(fpha.iter_videos(fpha_root, "train"))
  for i in (0, 17, 39):
    assert_colour(video.load_image(i), i, tol=3)  # JPEG
  load = pickle.loads(pickle.dumps(video.load_image))
  np.testing.assert_array_equal(load(5), video.load_image(5))


def test_fpha_other_image_size(fpha_root):
  default = next(fpha.iter_videos(fpha_root, "train"))
  video = next(fpha.iter_videos(fpha_root, "train", image_size=(135, 240)))
  assert video.image_size == (135, 240)
  np.testing.assert_allclose(video.intrinsics, np.array(FPHA_K480) * [[.5], [.5], [1]], rtol=1e-6)
  np.testing.assert_allclose(video.joints2d, default.joints2d / 2, rtol=1e-6)
  np.testing.assert_array_equal(video.joints3d, default.joints3d)
  assert_colour(video.load_image(12), 12, size=(135, 240), tol=3)


def test_fpha_test_split_from_originals(fpha_root):
  (video,) = fpha.iter_videos(fpha_root, "test")
  assert video.video_id == "Subject_1/clean_glasses/1" and len(video) == 3
  assert video.action == 3 and set(video.object.tolist()) == {2}
  assert_colour(video.load_image(2), 2, tol=3)
  small_video = next(fpha.iter_videos(fpha_root, "test", image_size=(135, 240)))
  assert_colour(small_video.load_image(0), 0, size=(135, 240), tol=3)


def _texture(size):
  """A deterministic (H, W, 3) uint8 image with fine detail (1-px stripes) and gradients."""
  y, x = np.mgrid[:size[0], :size[1]]
  return np.stack([(x % 2) * 180 + y % 50, (x * 255 // size[1]), (y * 7 + x * 3) % 256],
                  -1).astype(np.uint8)


def test_fpha_originals_resized_like_preprocessing(tmp_path):
  root = rl.write_fpha(tmp_path, videos=(("test", "Subject_3", "give_coin", "2", 1, "full"),))
  path = root / "Video_files/Subject_3/give_coin/2/color/color_0000.jpeg"
  Image.fromarray(_texture((1080, 1920))).save(path, quality=90)
  # reference.md §3.3: PIL bilinear (antialiased) to 480x270, saved with PIL's default JPEG
  # quality 75.
  small = Image.open(path).convert("RGB").resize((480, 270), Image.Resampling.BILINEAR)
  small.save(tmp_path / "expected.jpeg", quality=75)
  expected = np.asarray(Image.open(tmp_path / "expected.jpeg").convert("RGB"))
  video = next(fpha.iter_videos(root, "test"))
  np.testing.assert_array_equal(video.load_image(0), expected)


def _fpha_skeleton(root, video=0):
  _, subject, action, seq, _, _ = rl.FPHA_VIDEOS[video]
  return root / "Hand_pose_annotation_v1" / subject / action / seq / "skeleton.txt"


def _edit_line(path, number, text):
  lines = path.read_text().splitlines()
  lines[number - 1] = text
  path.write_text("\n".join(lines) + "\n")


SPLIT = "data_split_action_recognition.txt"
FPHA_BAD = {
    "missing split file": (lambda r: (r / SPLIT).unlink(), FileNotFoundError, [SPLIT]),
    "split line without seq": (lambda r: _edit_line(r / SPLIT, 2, "Subject_1/charge_cell_phone 0"),
                               ValueError, [f"{SPLIT}:2:", "Subject_k/action_name/seq_idx"]),
    "split without header": (lambda r: _edit_line(r / SPLIT, 1, "Subject_1/give_coin/1 0"),
                             ValueError, [f"{SPLIT}:1:", "header"]),
    "unknown action": (lambda r: _edit_line(r / SPLIT, 3, "Subject_2/fly_kite/2 0"),
                       ValueError, [f"{SPLIT}:3:", "unknown action 'fly_kite'"]),
    "missing action table": (lambda r: (r / "action_object_info.txt").unlink(), FileNotFoundError,
                             ["action_object_info.txt"]),
    "missing skeleton": (lambda r: _fpha_skeleton(r).unlink(), FileNotFoundError,
                         ["skeleton.txt"]),
    "wrong count": (lambda r: _edit_line(_fpha_skeleton(r), 5, "4 1.0 2.0 3.0"), ValueError,
                    ["skeleton.txt:5:", "4 numbers, expected 64"]),
    "nan": (lambda r: _edit_line(_fpha_skeleton(r), 3, rl.fpha_skeleton_line(2).replace(
        "450.000000", "nan", 1).replace("452.000000", "nan", 1)), ValueError,
            ["skeleton.txt:3:", "NaN"]),
    "inf": (lambda r: _edit_line(_fpha_skeleton(r), 8, "7 inf" + " 1.0" * 62), ValueError,
            ["skeleton.txt:8:", "infinite"]),
    "frame gap": (lambda r: _edit_line(_fpha_skeleton(r), 10, rl.fpha_skeleton_line(9, index=10)),
                  ValueError, ["skeleton.txt:10:", "frame index 10, expected 9"]),
    "empty skeleton": (lambda r: _fpha_skeleton(r).write_text(""), ValueError,
                       ["skeleton.txt", "empty"]),
    "short skeleton": (lambda r: _fpha_skeleton(r).write_text(rl.fpha_skeleton_line(0) + "\n"),
                       ValueError, ["skeleton.txt", "1 rows, expected 40"]),
    "not in subject info": (lambda r: _edit_line(r / "Subjects_info/Subject_1_info.txt", 4,
                                                 "charge_cell_phone 9 40"),
                            ValueError, ["Subject_1_info.txt", "charge_cell_phone 1"]),
    "behind camera": (lambda r: _edit_line(_fpha_skeleton(r), 2, "1" + " 0 0 -900" * 21),
                      ValueError, ["skeleton.txt", "frame 1 has a joint at or behind"]),
    "no frames": (lambda r: _edit_line(r / "Subjects_info/Subject_1_info.txt", 4,
                                       "charge_cell_phone 1 0"), ValueError, ["0 frames"]),
}


@pytest.mark.parametrize("case", sorted(FPHA_BAD))
def test_fpha_bad_annotations(tmp_path, case):
  mutate, error, fragments = FPHA_BAD[case]
  root = rl.write_fpha(tmp_path, images=False)
  (root / "Video_files_480/Subject_1/charge_cell_phone/1/color").mkdir(parents=True)
  (root / "Video_files_480/Subject_2/open_juice_bottle/2/color").mkdir(parents=True)
  mutate(root)
  with pytest.raises(error) as info:
    list(fpha.iter_videos(root, "train"))
  for fragment in fragments:
    assert fragment in str(info.value), str(info.value)


def test_fpha_missing_test_header_and_split(tmp_path):
  root = rl.write_fpha(tmp_path, videos=rl.FPHA_VIDEOS[:1], images=False)
  _edit_line(root / SPLIT, 3, "")
  with pytest.raises(ValueError, match="Test"):
    list(fpha.iter_videos(root, "test"))
  with pytest.raises(ValueError, match="unknown FPHA split"):
    list(fpha.iter_videos(root, "val"))


def test_fpha_bad_images(tmp_path):
  root = rl.write_fpha(tmp_path, videos=(("train", "Subject_1", "give_coin", "1", 4, "480"),))
  color = root / "Video_files_480/Subject_1/give_coin/1/color"
  (color / "color_0001.jpeg").unlink()
  (color / "color_0002.jpeg").write_bytes(b"not a jpeg")
  full = (color / "color_0003.jpeg").read_bytes()
  (color / "color_0003.jpeg").write_bytes(full[:len(full) // 3])
  video = next(fpha.iter_videos(root, "train"))  # building needs no image
  assert_colour(video.load_image(0), 0, tol=3)
  with pytest.raises(FileNotFoundError, match="color_0001.jpeg"):
    video.load_image(1)
  with pytest.raises(ValueError, match="color_0002.jpeg: cannot decode"):
    video.load_image(2)
  with pytest.raises(ValueError, match="color_0003.jpeg: cannot decode"):
    video.load_image(3)
  Image.new("RGB", (100, 50)).save(color / "color_0000.jpeg")
  with pytest.raises(ValueError, match="color_0000.jpeg: image is 100x50 .*expected 480x270"):
    video.load_image(0)
  color.rename(root / "elsewhere")
  with pytest.raises(FileNotFoundError, match="Video_files_480.*frame folder not found"):
    next(fpha.iter_videos(root, "train"))


# ------------------------------------------------------------------------------------------- H2O
def test_h2o_vocabulary(h2o_root):
  vocab = h2o.load_vocabulary(h2o_root)
  assert len(vocab["actions"]) == 36 and len(vocab["objects"]) == 8
  assert vocab["actions"][16] == "open lotion" and vocab["actions"][22] == "pour milk"
  assert vocab["actions"][35] == "squeeze lotion"
  assert vocab["objects"] == ["book", "espresso", "lotion", "spray", "milk", "cocoa", "chips",
                              "cappuccino"]


def test_h2o_train_annotations(h2o_root):
  videos = list(h2o.iter_videos(h2o_root, "train"))
  assert [v.video_id for v in videos] == ["train/0001", "train/0002"]
  assert [len(v) for v in videos] == [40, 37]
  np.testing.assert_array_equal(videos[0].frame_idx, np.arange(5, 45))
  np.testing.assert_array_equal(videos[1].frame_idx, np.arange(50, 87))
  assert [v.action for v in videos] == [16, 22]  # labels 17, 23
  assert set(videos[0].object.tolist()) == {2} and set(videos[1].object.tolist()) == {4}
  assert videos[0].subject == "subject1"
  video = videos[0]
  np.testing.assert_allclose(video.intrinsics, H2O_K480, rtol=1e-7)
  frames = video.frame_idx
  np.testing.assert_array_equal(video.hand_valid[:, 0], frames % 10 != 7)
  assert video.hand_valid[:, 1].all()
  expected = np.stack([rl.h2o_pose(f)[0] for f in frames])
  np.testing.assert_allclose(video.joints3d, expected, rtol=1e-6, atol=1e-8)
  # Frame 12 (position 7), right hand joint 4 (index 25) by hand.
  x, y, z = rl.h2o_pose(12)[0][25]
  u = (H2O_F[0] * x / z + H2O_C[0]) * 0.375
  v = (H2O_F[1] * y / z + H2O_C[1]) * 0.375
  np.testing.assert_allclose(video.joints2d[7, 25], [u, v], rtol=1e-6)
  # Frame 17 (position 12): the left hand is not annotated -> 2D zeros, never inf/NaN.
  assert not video.hand_valid[12, 0]
  np.testing.assert_array_equal(video.joints2d[12, :21], 0)
  assert np.isfinite(video.joints2d).all()
  np.testing.assert_allclose(video.joints2d[12, 21], (
      (H2O_F[0] * expected[12, 21, 0] / expected[12, 21, 2] + H2O_C[0]) * 0.375,
      (H2O_F[1] * expected[12, 21, 1] / expected[12, 21, 2] + H2O_C[1]) * 0.375), rtol=1e-6)


def test_h2o_images_and_image_size(h2o_root):
  video = next(h2o.iter_videos(h2o_root, "train"))
  assert_colour(video.load_image(0), 5)  # PNG: exact
  assert_colour(pickle.loads(pickle.dumps(video.load_image))(39), 44)
  small = next(h2o.iter_videos(h2o_root, "train", image_size=(135, 240)))
  np.testing.assert_allclose(small.intrinsics, np.array(H2O_K480) * [[.5], [.5], [1]], rtol=1e-6)
  np.testing.assert_allclose(small.joints2d, video.joints2d / 2, rtol=1e-6)
  assert_colour(small.load_image(3), 8, size=(135, 240))


def test_h2o_val_and_unlabelled_test(h2o_root):
  (val,) = h2o.iter_videos(h2o_root, "val")
  assert val.video_id == "val/0001" and val.action == 32 and set(val.object.tolist()) == {0}
  (test,) = h2o.iter_videos(h2o_root, "test")
  assert test.action == -1 and set(test.object.tolist()) == {-1}  # reference.md §6.11
  np.testing.assert_array_equal(test.frame_idx, [10, 11, 12])
  assert_colour(test.load_image(1), 11)  # from the 1280x720 original, constant colour: exact
  assert_colour(next(h2o.iter_videos(h2o_root, "test", (135, 240))).load_image(2), 12, (135, 240))


def test_h2o_originals_resized_without_antialias(tmp_path):
  segments = {"val": ((1, "subject2/k1/3", 33, 0, 0, "full"),)}
  root = rl.write_h2o(tmp_path, segments=segments)
  original = _texture((720, 1280))
  Image.fromarray(original).save(root / "subject2/k1/3/cam4/rgb/000000.png")
  image = next(h2o.iter_videos(root, "val")).load_image(0)
  # reference.md §3.3: OpenCV INTER_LINEAR, no antialias: plain bilinear sampling, to within
  # 1 level.
  assert np.abs(image.astype(int) - _float_bilinear(original, (270, 480))).max() <= 1


def test_h2o_labelled_test_file_reference_layout(tmp_path):
  root = rl.write_h2o(tmp_path, segments={"test": rl.H2O_SEGMENTS["val"]}, images=False)
  (root / "action_labels/action_test.txt").write_text("header\n1 subject2/k1/3 1 3 0 9 33\n")
  (root / "subject2/k1/3/cam4/rgb480_270").mkdir()
  (video,) = h2o.iter_videos(root, "test")
  assert video.action == 32 and list(video.frame_idx) == [1, 2, 3]


def _pose(root, frame, rel="subject1/h1/0"):
  return root / rel / "cam4" / "hand_pose" / f"{frame:06d}.txt"


def _values(frame):
  return rl.h2o_pose_line(frame).split()


TRAIN = "action_train.txt"
H2O_BAD = {
    "missing split file": (lambda r: (r / "action_labels" / TRAIN).unlink(), FileNotFoundError,
                           [TRAIN]),
    "six columns": (lambda r: _edit_line(r / "action_labels" / TRAIN, 2,
                                         "1 subject1/h1/0 17 5 44 0"),
                    ValueError, [f"{TRAIN}:2:", "expected 'id path action_label"]),
    "not a number": (lambda r: _edit_line(r / "action_labels" / TRAIN, 3,
                                          "2 subject1/h1/0 23 5x 86 0 90"),
                     ValueError, [f"{TRAIN}:3:"]),
    "ids out of order": (lambda r: _edit_line(r / "action_labels" / TRAIN, 3,
                                              "3 subject1/h1/0 23 50 86 0 90"),
                         ValueError, [f"{TRAIN}:3:", "segment id 3, expected 2"]),
    "unknown label": (lambda r: _edit_line(r / "action_labels" / TRAIN, 2,
                                           "1 subject1/h1/0 37 5 44 0 50"),
                      ValueError, [f"{TRAIN}:2:", "unknown action label 37"]),
    "label zero": (lambda r: _edit_line(r / "action_labels" / TRAIN, 2,
                                        "1 subject1/h1/0 0 5 44 0 50"),
                   ValueError, ["unknown action label 0"]),
    "empty segment": (lambda r: _edit_line(r / "action_labels" / TRAIN, 3,
                                           "2 subject1/h1/0 23 50 49 0 90"),
                      ValueError, [f"{TRAIN}:3:", "empty"]),
    "wrong count": (lambda r: _pose(r, 9).write_text(" ".join(_values(9)[:-1])), ValueError,
                    ["000009.txt", "127 numbers, expected 128"]),
    "nan": (lambda r: _pose(r, 9).write_text(" ".join(_values(9)[:5] + ["nan"] + _values(9)[6:])),
            ValueError, ["000009.txt", "NaN"]),
    "inf": (lambda r: _pose(r, 60).write_text(" ".join(_values(60)[:-1] + ["-inf"])),
            ValueError, ["000060.txt", "infinite"]),
    "bad flag": (lambda r: _pose(r, 9).write_text(" ".join(["2"] + _values(9)[1:])), ValueError,
                 ["000009.txt", "flags"]),
    "valid hand at z=0": (lambda r: _pose(r, 9).write_text(
        " ".join(["1"] + ["0"] * 63 + _values(9)[64:])),
        ValueError, ["000009.txt", "left hand is marked valid", "z <= 0"]),
    "gap": (lambda r: _pose(r, 20).unlink(), FileNotFoundError,
            ["000020.txt", "segment 1", "covers frames 5..44"]),
    "no image folder": (lambda r: (r / "subject1/h1/0/cam4/rgb480_270").rmdir(), FileNotFoundError,
                        ["rgb480_270", "frame folder not found"]),
}


@pytest.mark.parametrize("case", sorted(H2O_BAD))
def test_h2o_bad_annotations(tmp_path, case):
  mutate, error, fragments = H2O_BAD[case]
  root = rl.write_h2o(tmp_path, segments={"train": rl.H2O_SEGMENTS["train"]}, images=False)
  (root / "subject1/h1/0/cam4/rgb480_270").mkdir()
  mutate(root)
  with pytest.raises(error) as info:
    list(h2o.iter_videos(root, "train"))
  for fragment in fragments:
    assert fragment in str(info.value), str(info.value)


def test_h2o_bad_images(tmp_path):
  segments = {"val": ((1, "subject2/k1/3", 33, 0, 3, "480"),)}
  root = rl.write_h2o(tmp_path, segments=segments)
  rgb = root / "subject2/k1/3/cam4/rgb480_270"
  (rgb / "000001.png").unlink()
  (rgb / "000002.png").write_bytes(b"\x89PNG garbage")
  Image.new("RGB", (1280, 720)).save(rgb / "000003.png")
  video = next(h2o.iter_videos(root, "val"))
  assert_colour(video.load_image(0), 0)
  with pytest.raises(FileNotFoundError, match="000001.png: image file not found"):
    video.load_image(1)
  with pytest.raises(ValueError, match="000002.png: cannot decode"):
    video.load_image(2)
  with pytest.raises(ValueError, match="000003.png: image is 1280x720"):
    video.load_image(3)


# ------------------------------------------------------------------------------------ image_io
def _float_bilinear(image, size):
  """Plain float bilinear with aligned pixel centres and edge clamping (OpenCV's geometry)."""
  def axis(n_in, n_out):
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, pos - i0
  y0, y1, fy = axis(image.shape[0], size[0])
  x0, x1, fx = axis(image.shape[1], size[1])
  img = image.astype(float)
  top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
  bot = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
  return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_resize_linear_cv_geometry_and_no_antialias():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (72, 128, 3), dtype=np.uint8)
  out = image_io.resize_linear_cv(image, (27, 48))  # the 1280x720 -> 480x270 ratio
  assert out.shape == (27, 48, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - _float_bilinear(image, (27, 48))).max() <= 1
  up = image_io.resize_linear_cv(image[:10, :10], (25, 25))  # edges clamp on upscaling
  assert np.abs(up.astype(int) - _float_bilinear(image[:10, :10], (25, 25))).max() <= 1
  constant = np.full((72, 128, 3), 201, np.uint8)
  np.testing.assert_array_equal(image_io.resize_linear_cv(constant, (27, 48)), 201)
  # No antialias: 1-pixel stripes are sampled, not averaged (PIL would give ~127 everywhere).
  stripes = np.zeros((8, 128, 3), np.uint8)
  stripes[:, 1::2] = 255
  row = image_io.resize_linear_cv(stripes, (3, 48))[1, :, 0].astype(int)
  assert abs(row[0] - 255 * 5 / 6) <= 1 and row.max() - row.min() > 100


def test_resize_linear_cv_matches_opencv_when_installed():
  cv2 = pytest.importorskip("cv2")
  image = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
  np.testing.assert_array_equal(image_io.resize_linear_cv(image, (270, 480)),
                                cv2.resize(image, (480, 270)))


def test_check_image_size():
  assert image_io.check_image_size([135, "240"]) == (135, 240)
  for bad in ((0, 4), (3,), "x"):
    with pytest.raises(ValueError, match="image_size"):
      image_io.check_image_size(bad)
