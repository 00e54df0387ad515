"""prepare_split -> shards + manifest -> read_clips, checked against clip lists derived here.

The expected clips are computed in this file straight from reference.md §3.4-3.5 (start rule and
step loop), independently of data_pipeline.windowing. Fake videos encode each raw frame number in
their pixels and annotations, so a frame from the wrong place shows up as a wrong value.
"""

import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app
import numpy as np
from PIL import Image
import pytest

import raw_layouts
from data_pipeline import h2o
from data_pipeline import reader
from data_pipeline import writer
from data_pipeline.video import Video
from htt_jax import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = (16, 24)
JOINTS, HANDS = 3, 2


class FrameLoader:
  """Picklable image loader (spawned workers get it): pixels encode video and raw frame number."""

  def __init__(self, seed, first_frame, size):
    self.seed, self.first_frame, self.size = seed, first_frame, size

  def __call__(self, position):
    return frame_image(self.seed, self.first_frame + position, self.size)


def frame_image(seed, raw, size):
  image = np.zeros((*size, 3), np.uint8)
  # Steps of 8 survive JPEG: R and G together tell frames 0..1023 apart.
  image[..., 0] = 8 * (raw % 32)
  image[..., 1] = 8 * (raw // 32 % 32)
  image[..., 2] = (30 * seed + 5) % 190
  image[: size[0] // 2, : size[1] // 2, 2] += 60  # some structure for the lossless check
  return image


def fake_video(seed, length, first_frame=0, action=None, size=SIZE, loader=None):
  raw = np.arange(first_frame, first_frame + length)
  j = np.arange(JOINTS)
  joints3d = np.stack(np.broadcast_arrays(raw[:, None] * 1e-3 + j * 1e-2, seed * 0.1 + 0 * j,
                                          0.4 + raw[:, None] * 1e-4 + 0 * j), -1)
  joints2d = np.stack(np.broadcast_arrays(raw[:, None] + 0.25 * j, 100.0 * seed + 0 * j), -1)
  return Video(
      video_id=f"subject_{seed}/video_{seed}", frame_idx=raw.astype(np.int64),
      joints3d=joints3d.astype(np.float32), joints2d=joints2d.astype(np.float32),
      intrinsics=np.array([[200 + seed, 0, 12], [0, 201, 8], [0, 0, 1]], np.float32),
      hand_valid=np.stack([raw % 3 != 0, np.ones(length, bool)], -1),
      object=(raw % 5).astype(np.int32), action=seed if action is None else action,
      load_image=loader or FrameLoader(seed, first_frame, size), image_size=size,
      subject=f"subject_{seed}")


def make_videos():
  return [fake_video(0, 40), fake_video(1, 257, first_frame=100), fake_video(2, 5, action=-1)]


def expected_clips(videos, t_clip, t_win, spacing, train):
  """The reference's clips, by its own rules (reference.md §3.4-3.5), not
  via data_pipeline.windowing."""
  out = []
  for video in videos:
    length = len(video)
    for start in range(length):
      rule = t_win * spacing if train else spacing
      if start % (t_clip * spacing) >= rule:
        continue
      positions, valid, current = [start], [1.0], start
      for _ in range(t_clip - 1):
        if valid[-1] and current + spacing < length:
          current += spacing
          valid.append(1.0)
        else:
          valid.append(0.0)
        positions.append(current)
      out.append((video, np.array(positions), np.array(valid, np.float32)))
  return out


def check_clips(clips, videos, t_clip, t_win, spacing, train, exact_images=True):
  expected = expected_clips(videos, t_clip, t_win, spacing, train)
  assert len(clips) == len(expected)
  for clip, (video, positions, valid) in zip(clips, expected):
    where = f"{video.video_id} start {positions[0]}"
    assert clip["video_id"] == video.video_id, where
    np.testing.assert_array_equal(clip["frame_idx"], video.frame_idx[positions], err_msg=where)
    np.testing.assert_array_equal(clip["not_padding"], valid, err_msg=where)
    np.testing.assert_array_equal(clip["joints3d"], video.joints3d[positions], err_msg=where)
    np.testing.assert_array_equal(clip["joints25d"][..., :2], video.joints2d[positions])
    np.testing.assert_array_equal(clip["joints25d"][..., 2], video.joints3d[positions][..., 2])
    np.testing.assert_array_equal(clip["intrinsics"], np.broadcast_to(video.intrinsics,
                                                                      (t_clip, 3, 3)))
    np.testing.assert_array_equal(clip["object"], video.object[positions], err_msg=where)
    np.testing.assert_array_equal(clip["hand_valid"], video.hand_valid[positions], err_msg=where)
    assert int(clip["action"]) == video.action and clip["action"].shape == ()
    images = np.stack([video.load_image(int(p)) for p in positions])
    assert clip["image"].dtype == np.uint8 and clip["image"].shape == images.shape
    if exact_images:
      np.testing.assert_array_equal(clip["image"], images, err_msg=where)
    else:
      error = np.abs(clip["image"].astype(int) - images).mean()
      assert error < 2.0, (where, error)
      np.testing.assert_allclose(clip["image"][..., :2].mean((1, 2)), images[:, 0, 0, :2], atol=3,
                                 err_msg=where)


def stored_frames(videos, t_clip, t_win, spacing):
  total = 0
  for video in videos:
    for parity in range(spacing):
      left = len(range(parity, len(video), spacing))
      while left > 0:
        total += min(t_clip + t_win - 1, left)
        left -= t_clip
  return total


def prepare(tmp_path, videos=None, **kwargs):
  args = dict(num_frames=16, window=4, spacing=2, image_format="png", num_workers=1,
              dataset_name="fake", vocabulary={"actions": ["a", "b", "c"], "objects": ["o"]},
              progress=False, shard_bytes=1)  # shard_bytes=1: one video per shard
  args.update(kwargs)
  return writer.prepare_split(make_videos() if videos is None else videos, str(tmp_path),
                              "train", **args)


def listing(path):
  return {p.name: p.stat().st_mtime_ns for p in pathlib.Path(path).iterdir()}


@pytest.mark.parametrize("t_clip,t_win,spacing", [(16, 4, 2), (128, 16, 2), (8, 3, 3)])
def test_png_roundtrip_train_and_eval(tmp_path, t_clip, t_win, spacing):
  videos = make_videos()
  manifest = prepare(tmp_path, videos, num_frames=t_clip, window=t_win, spacing=spacing)
  train = list(reader.read_clips(str(tmp_path), "train", all_train_offsets=True))
  check_clips(train, videos, t_clip, t_win, spacing, train=True)
  evaluation = list(reader.read_clips(str(tmp_path), "train"))
  check_clips(evaluation, videos, t_clip, t_win, spacing, train=False)
  # The manifest counts what the reader yields and what the files hold.
  assert manifest == json.loads((tmp_path / "train.manifest.json").read_text())
  assert manifest["clips"] == {"train": len(train), "eval": len(evaluation)}
  assert manifest["records"] == len(evaluation) == sum(s["records"] for s in manifest["shards"])
  assert manifest["frames"] == {"raw": 302,
                                "stored": stored_frames(videos, t_clip, t_win, spacing)}
  assert manifest["videos"] == {"count": 3, "ids": [v.video_id for v in videos]}
  assert len(manifest["shards"]) == 3 and [s["videos"] for s in manifest["shards"]] == [1, 1, 1]
  assert sorted(p.name for p in tmp_path.glob("*.tfrecord")) == [
      s["file"] for s in manifest["shards"]] == [f"train-{i:05d}-of-00003.tfrecord" for i in range(3)]
  for key, value in dict(format_version=1, dataset="fake", split="train", num_frames=t_clip,
                         window=t_win, spacing=spacing, image_size=list(SIZE), image_format="png",
                         num_joints=JOINTS, num_hands=HANDS).items():
    assert manifest[key] == value, key
  assert manifest["vocabulary"] == {"actions": ["a", "b", "c"], "objects": ["o"]}
  assert manifest["bytes_per_stored_frame"] == pytest.approx(
      manifest["bytes"] / manifest["frames"]["stored"])
  if (t_clip, t_win, spacing) == (128, 16, 2):  # reference.md §3.4: L=40 -> 32 training clips
    assert sum(c["video_id"] == videos[0].video_id for c in train) == 32


def test_jpeg_is_close(tmp_path):
  videos = make_videos()
  manifest = prepare(tmp_path, videos, image_format="jpeg", jpeg_quality=95, shard_bytes=150e6)
  assert manifest["jpeg_quality"] == 95 and len(manifest["shards"]) == 1
  check_clips(list(reader.read_clips(str(tmp_path), "train")), videos, 16, 4, 2, train=False,
              exact_images=False)


@pytest.mark.parametrize("quality", [75, 95])
def test_stored_jpeg_decodes_to_pillows_pixels(quality):
  """The reference decodes its frames with PIL: the readers give the pixels Pillow gives for the
  same bytes, not TensorFlow's default (fast IDCT) decoding of them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data_pipeline import schema  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(quality)
  y, x = np.mgrid[0:72, 0:128]
  smooth = np.stack([x * 2, y * 3, (x + y) * 1.5], -1) % 256
  frames = [(smooth + rng.normal(0, 12, smooth.shape)).clip(0, 255).astype(np.uint8)
            for _ in range(2)]
  encoded = [writer.encode_image(f, "jpeg", quality) for f in frames]
  pillow = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
  decoded = schema.decode_images(tf.constant(encoded), 72, 128).numpy()
  np.testing.assert_array_equal(decoded, pillow)
  # These frames tell the decoders apart: TensorFlow's default would not pass the check above.
  fast = tf.io.decode_jpeg(encoded[0], channels=3).numpy()
  assert (fast != pillow[0]).mean() > 0.1
  # PNG frames decode losslessly through the same function.
  png = schema.decode_images(tf.constant([writer.encode_image(frames[0], "png")]), 72, 128)
  np.testing.assert_array_equal(png.numpy()[0], frames[0])


def test_rerun_skips_and_interrupted_run_resumes(tmp_path):
  manifest = prepare(tmp_path)
  before = listing(tmp_path)
  clips = list(reader.read_clips(str(tmp_path), "train", all_train_offsets=True))
  time.sleep(0.01)
  assert prepare(tmp_path) == manifest
  assert listing(tmp_path) == before  # nothing rewritten
  # Interruption: the manifest and one shard are missing (a .incomplete file may be left over).
  (tmp_path / "train.manifest.json").unlink()
  (tmp_path / "train-00001-of-00003.tfrecord").rename(
      tmp_path / "train-00001-of-00003.tfrecord.incomplete")
  with pytest.raises(FileNotFoundError, match="no manifest: prepare_data.py did not finish"):
    reader.read_clips(str(tmp_path), "train")
  # shard_bytes changed: the plan, not a new estimate, decides the shards of a resumed run.
  assert prepare(tmp_path, shard_bytes=150e6) == manifest
  after = listing(tmp_path)
  assert set(after) == set(before)
  changed = {name for name in after if after[name] != before[name]}
  assert changed == {"train-00001-of-00003.tfrecord", "train.manifest.json"}
  again = list(reader.read_clips(str(tmp_path), "train", all_train_offsets=True))
  assert len(again) == len(clips)
  for a, b in zip(again, clips):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("change,culprit", [
    (dict(num_frames=8), "train.manifest.json"), (dict(window=2), "train.manifest.json"),
    (dict(spacing=3), "train.manifest.json"), (dict(dataset_name="other"), "train.manifest.json"),
    (dict(image_format="jpeg"), "train.manifest.json"),
    (dict(videos=[fake_video(0, 40, size=(8, 8))]), "train.manifest.json"),
    (dict(videos=make_videos()[:2]), "train.manifest.json")])
def test_mismatched_output_is_refused_before_writing(tmp_path, change, culprit):
  prepare(tmp_path)
  before = listing(tmp_path)
  change = dict(change)
  videos = change.pop("videos", None)
  with pytest.raises(ValueError, match=str(tmp_path / culprit)):
    prepare(tmp_path, videos, **change)
  assert listing(tmp_path) == before


def test_other_split_and_stray_shards_are_refused(tmp_path):
  prepare(tmp_path)
  with pytest.raises(ValueError, match="train.manifest.json.*num_frames=16"):
    writer.prepare_split(make_videos(), str(tmp_path), "test", num_frames=32, window=4,
                         dataset_name="fake", progress=False)
  assert not list(tmp_path.glob("test*"))
  other = tmp_path / "other"
  other.mkdir()
  (other / "train-00000-of-00007.tfrecord").write_bytes(b"junk")
  with pytest.raises(ValueError, match="train-00000-of-00007.tfrecord"):
    prepare(other)
  assert [p.name for p in other.iterdir()] == ["train-00000-of-00007.tfrecord"]


def test_bad_frame_leaves_nothing_that_looks_complete(tmp_path):
  bad = fake_video(3, 20, loader=lambda i: np.zeros((4, 4, 3), np.uint8) if i == 7 else
                   frame_image(3, i, SIZE))
  with pytest.raises(ValueError, match=r"video 'subject_3/video_3', frame 7 \(raw 7\)"):
    prepare(tmp_path, [bad])
  assert not list(tmp_path.glob("*.tfrecord")) and not list(tmp_path.glob("*.manifest.json"))


def test_workers_write_the_same_shards(tmp_path):
  one = prepare(tmp_path / "one")
  many = prepare(tmp_path / "many", num_workers=2)
  assert one == many
  for shard in one["shards"]:
    assert ((tmp_path / "one" / shard["file"]).read_bytes()
            == (tmp_path / "many" / shard["file"]).read_bytes())
  # A loader that does not pickle (a lambda) falls back to this process and gives the same bytes.
  videos = make_videos()
  for video in videos:
    video.load_image = (lambda f: lambda i: f(i))(video.load_image)
  assert prepare(tmp_path / "lambda", videos, num_workers=2) == one


def _textured_video(length, size):
  """Smooth texture + sensor-like noise, moving a little every frame (JPEG-realistic content)."""
  rng = np.random.default_rng(0)
  base = Image.fromarray(rng.integers(0, 256, (size[0] // 8, size[1] // 8 + length, 3),
                                      dtype=np.uint8))
  base = np.asarray(base.resize((size[1] + 8 * length, size[0]), Image.BILINEAR))
  noise = rng.normal(0, 4, (4, *size, 3))
  frames = [np.clip(base[:, 8 * i: 8 * i + size[1]] + noise[i % 4], 0, 255).astype(np.uint8)
            for i in range(length)]
  return fake_video(0, length, size=size, loader=frames.__getitem__)


def test_measure_conversion_speed(tmp_path, capsys):
  """Prints (does not assert) conversion and read speed at the paper's size and settings."""
  size, length = (270, 480), 288  # one full 256-frame block and a partial one
  video = _textured_video(length, size)
  start = time.perf_counter()
  manifest = writer.prepare_split([video], str(tmp_path), "train", num_frames=128, window=16,
                                  image_format="jpeg", jpeg_quality=95, progress=False)
  seconds = time.perf_counter() - start
  start = time.perf_counter()
  frames = sum(len(c["frame_idx"]) for c in reader.read_clips(str(tmp_path), "train"))
  read_seconds = time.perf_counter() - start
  with capsys.disabled():
    print(f"\n[270x480 JPEG q95, T=128 t=16, 1 process] prepare_split {length / seconds:.0f} raw "
          f"frames/s, {manifest['bytes_per_stored_frame'] / 1e3:.1f} kB per stored frame, stored/raw"
          f" {manifest['frames']['stored'] / length:.2f}; read_clips {frames / read_seconds:.0f} "
          f"clip frames/s")


def test_prepare_data_script_synthetic(tmp_path):
  if importlib.util.find_spec("data_pipeline.synthetic") is None:
    pytest.skip("data_pipeline.synthetic is not written yet")
  command = [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--dataset=synthetic",
             f"--output_dir={tmp_path}", "--image_size=72,128", "--num_frames=16", "--window=4",
             "--synthetic_videos=2", "--num_workers=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  manifests = sorted(tmp_path.glob("*.manifest.json"))
  assert manifests
  for path in manifests:
    split = path.name[: -len(".manifest.json")]
    clip = next(reader.read_clips(str(tmp_path), split))
    assert clip["image"].shape == (16, 72, 128, 3)
    assert json.loads(path.read_text())["dataset"] == "synthetic"


# Arguments and flags that no training config could use (or that the encoder would silently
# clamp) are refused before anything is read or written.

@pytest.mark.parametrize("change,message", [
    (dict(image_format="jpeg", jpeg_quality=500), r"jpeg_quality=500 must be an integer in 1..100"),
    (dict(image_format="jpeg", jpeg_quality=0), r"jpeg_quality=0 must be an integer in 1..100"),
    (dict(shard_bytes=0), r"shard_bytes > 0.*got 0,"),
    (dict(min_shards=0), r"min_shards >= 1.*got 1, 0,"),
    (dict(num_workers=0), r"num_workers >= 1.*got 1, 1, 0"),
    (dict(videos=[]), r"split 'train' has no videos: nothing to write")])
def test_bad_arguments_and_empty_splits_write_nothing(tmp_path, change, message):
  change = dict(change)
  videos = change.pop("videos", None)
  with pytest.raises(ValueError, match=message):
    prepare(tmp_path / "out", videos, **change)
  assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def prepare_data_script():
  """scripts/prepare_data.py as a module. Its absl flags (--dataset, ...) are defined in this
  process's global FLAGS while the module's tests run and removed afterwards: left defined, they
  clash with other command lines parsed in the same process (TFDS's `--dataset`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location("prepare_data_script",
                                                ROOT / "scripts" / "prepare_data.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  yield module
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)


def run_prepare_data(script, *args):
  """The script's main() on parsed flags, in this process (as cli.run would call it)."""
  script.FLAGS(["prepare_data.py", *args])
  try:
    return script.main(["prepare_data.py"])
  finally:
    script.FLAGS.unparse_flags()


@pytest.mark.parametrize("flag,message", [
    ("--num_frames=12", r"--num_frames=12 \(T\) must be a multiple of --window=8 \(t\)"),
    ("--image_size=16,16", r"--image_size=16,16 must be H,W with both at least 32 px"),
    ("--image_size=72", r"--image_size=72 must be H,W"),
    ("--synthetic_videos=0", r"--synthetic_videos=0 must be an integer >= 1"),
    ("--synthetic_videos=-3", r"--synthetic_videos=-3 must be an integer >= 1"),
    ("--synthetic_seed=-1", r"--synthetic_seed=-1 must be an integer >= 0"),
    ("--jpeg_quality=500", r"--jpeg_quality=500 must be in 1\.\.100"),
    ("--jpeg_quality=0", r"--jpeg_quality=0 must be in 1\.\.100"),
    ("--spacing=0", r"--spacing=0 must be an integer >= 1"),
    ("--window=0", r"--window=0 must be an integer >= 1"),
    ("--num_frames=0", r"--num_frames=0 must be an integer >= 1"),
    ("--shard_mb=0", r"--shard_mb=0.0 must be a positive number of MB"),
    ("--shard_mb=nan", r"--shard_mb=nan must be a positive number of MB"),
    ("--min_shards=0", r"--min_shards=0 must be an integer >= 1"),
    ("--num_workers=0", r"--num_workers=0 must be an integer >= 1"),
    ("--splits=train,tset", r"--splits=train,tset: \['tset'\] are not splits of "
     r"--dataset=synthetic, whose splits are train,val,test")])
def test_prepare_data_refuses_bad_flags_before_any_work(prepare_data_script, tmp_path, flag,
                                                        message):
  out = tmp_path / "out"
  args = ["--dataset=synthetic", f"--output_dir={out}", "--image_size=72,128", "--num_frames=16",
          "--window=8", "--synthetic_videos=1", "--num_workers=1", flag]
  with pytest.raises(app.UsageError, match=message):
    run_prepare_data(prepare_data_script, *args)
  assert not out.exists()


def _h2o_without_frames(root, segments):
  """An H2O folder whose frame folders are empty: enough for annotations, no image is read."""
  raw = raw_layouts.write_h2o(root, segments, images=False)
  for cam in raw.glob("*/*/*/cam4"):
    (cam / "rgb480_270").mkdir()
  return raw


def test_prepare_data_refuses_an_empty_split_before_converting_any(prepare_data_script, tmp_path,
                                                                   monkeypatch):
  # An H2O folder whose val list has no segment: the source names the file, before train is read.
  raw = _h2o_without_frames(tmp_path / "raw", dict(raw_layouts.H2O_SEGMENTS, val=()))
  out = tmp_path / "out"
  args = ["--dataset=h2o", f"--raw_dir={raw}", f"--output_dir={out}", "--image_size=72,128",
          "--num_frames=16", "--window=8", "--num_workers=1"]
  with pytest.raises(config_lib.ConfigError,
                     match=f"split 'val': {raw / 'action_labels' / 'action_val.txt'}: no segments"):
    run_prepare_data(prepare_data_script, *args)
  assert not out.exists()
  # A source that yields no video without an error of its own: the split and --raw_dir are named.
  real = h2o.iter_videos
  monkeypatch.setattr(h2o, "iter_videos", lambda raw_dir, split, size: iter(
      () if split == "test" else real(raw_dir, split, size)))
  raw = _h2o_without_frames(tmp_path / "raw2", raw_layouts.H2O_SEGMENTS)
  with pytest.raises(config_lib.ConfigError,
                     match=f"split 'test' of --raw_dir={raw} has no videos: nothing to convert"):
    run_prepare_data(prepare_data_script, *args[:1], f"--raw_dir={raw}", *args[2:])
  assert not out.exists()
