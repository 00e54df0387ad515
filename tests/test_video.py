"""scripts/predict_video.py and its library (htt_jax/video*.py): every frame gets the prediction of
the evaluation clip that holds it, the outputs' shapes and the overlay's frames, the letterbox's
geometry, and memory that does not grow with the video's length."""

import json
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config
from htt_jax import checkpointing, inference, video_io, video_predict
from htt_jax.models import build_model, init_variables


def write_mp4(path, frames, fps=25, faststart=False):
  """An H.264 mp4 of the given (H, W, 3) uint8 frames (even sizes)."""
  options = {"movflags": "faststart"} if faststart else {}
  with av.open(str(path), "w", format="mp4", options=options) as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def moving_frames(count, height, width, seed=0, noise=60):
  """Frames with content that changes over time (a bright bar over noise), as uint8."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    frame = rng.integers(0, noise + 1, (height, width, 3), dtype=np.uint8)
    x = (5 * i) % (width - 12)
    frame[height // 4: 3 * height // 4, x:x + 12] = (220, 180, 90)
    out.append(frame)
  return out


def random_variables(config, seed=0):
  """Variables of the config's shapes drawn with NumPy (weights ~ N(0, 1/fan_in), BatchNorm
  statistics mean 0 and variance 1): seconds, where jit-compiling the initialisers costs 30."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda r: init_variables(build_model(config), r, config),
                          jax.random.key(0))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return np.full(leaf.shape, 1.0 if name.endswith("['var']") else 0.0, leaf.dtype)
    if len(leaf.shape) >= 2:
      return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(
          leaf.dtype)
    base = 1.0 if name.endswith("['scale']") else 0.0
    return (base + 0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


@pytest.fixture(scope="module")
def setup(smoke_config, tmp_path_factory):
  variables = random_variables(smoke_config, seed=5)
  ckpt = tmp_path_factory.mktemp("ckpt") / "checkpoints"
  checkpointing.save_variables(str(ckpt), variables, step=1, metadata={})
  return smoke_config, variables, str(ckpt)


def reference_eval_clips(length, num_frames, spacing):
  """The reference's evaluation clips of a video (reference.md §3.4-3.5), written out here
  independently of data_pipeline/windowing.py: starts q with q mod (T*s) < s, each clip stepping
  +s while the frame exists, then repeating its last frame as padding."""
  clips = []
  for start in range(length):
    if start % (num_frames * spacing) >= spacing:
      continue
    positions = [min(start + spacing * j, start + spacing * ((length - 1 - start) // spacing))
                 for j in range(num_frames)]
    valid = [start + spacing * j < length for j in range(num_frames)]
    clips.append((np.array(positions), np.array(valid)))
  return clips


def test_frame_folder_equals_predictor_on_evaluation_clips(setup, tmp_path):
  config, variables, _ = setup
  height, width = config.dataset.image_size
  length = 70  # Blocks of T*s = 64 frames: the second holds 6 frames, its two clips padded.
  frames = moving_frames(length, height, width)
  folder = tmp_path / "frames"
  folder.mkdir()
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"frame_{i:04d}.png")
  k = np.array([[90.0, 0.0, 60.0], [0.0, 92.0, 37.0], [0.0, 0.0, 1.0]])
  video_predict.predict_video(config, None, str(folder), str(tmp_path / "out"),
                              intrinsics="90,92,60,37", variables=variables, overlay=False,
                              figures=False)
  with np.load(tmp_path / "out" / "predictions.npz") as f:
    got = {key: f[key] for key in f.files}

  clips = reference_eval_clips(length, config.model.num_frames, config.dataset.spacing)
  assert len(clips) == 4
  images = np.concatenate([np.stack([frames[p] for p in pos]) for pos, _ in clips])
  not_padding = np.concatenate([valid for _, valid in clips]).astype(np.float32)
  expected = inference.Predictor(config, variables).predict(
      {"images": images, "intrinsics": np.broadcast_to(k, (len(images), 3, 3)),
       "not_padding": not_padding})
  np.testing.assert_array_equal(got["frame_index"], np.arange(length))
  # Outputs that differ from frame to frame, so the comparison below could tell frames apart.
  assert np.ptp(got["joints2d"][:, 0, 0]) > 0.1 and np.ptp(got["object_probs"][:, 0]) > 1e-3
  seen = np.zeros(length, int)
  t_clip = config.model.num_frames
  for c, (positions, valid) in enumerate(clips):
    for j in np.flatnonzero(valid):
      frame, row = positions[j], c * t_clip + j
      seen[frame] += 1
      for key in ("joints2d", "joints3d", "object_probs"):
        np.testing.assert_allclose(got[key][frame], expected[key][row], atol=1e-6, rtol=0,
                                   err_msg=f"{key}, frame {frame}")
      np.testing.assert_allclose(got["action_probs"][frame], expected["action_probs"][c],
                                 atol=1e-6, rtol=0)
  np.testing.assert_array_equal(seen, 1)  # Every frame in exactly one clip, as a valid frame.
  np.testing.assert_allclose(got["video_action_probs"], expected["action_probs"].mean(0),
                             atol=1e-6)


def test_mp4_through_the_script(setup, tmp_path):
  """A 100x160 mp4 (letterboxed into 72x128): one prediction per frame in the input's pixels,
  overlay.mp4 with as many frames, the same size and rate, the figures and the json."""
  config, _, ckpt = setup
  length = 45
  write_mp4(tmp_path / "in.mp4", moving_frames(length, 100, 160), fps=25)
  out = tmp_path / "out"
  run = subprocess.run(
      [sys.executable, "scripts/predict_video.py", "--config=configs/smoke.py",
       f"--checkpoint_dir={ckpt}", f"--video={tmp_path / 'in.mp4'}", f"--output_dir={out}"],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "depth and 3D are approximate" in run.stderr  # No --intrinsics: the warning.
  with np.load(out / "predictions.npz") as f:
    np.testing.assert_array_equal(f["frame_index"], np.arange(length))
    assert f["joints2d"].shape == (length, 21, 2) and f["joints3d"].shape == (length, 21, 3)
    assert f["action_probs"].shape == (length, 16) and f["object_probs"].shape == (length, 4)
    np.testing.assert_allclose(f["video_action_probs"].sum(), 1.0, atol=1e-5)
  with av.open(str(out / "overlay.mp4")) as container:
    stream = container.streams.video[0]
    decoded = sum(1 for _ in container.decode(stream))
    assert (decoded, stream.height, stream.width) == (length, 100, 160)
    assert stream.average_rate == 25
  summary = json.loads((out / "predictions.json").read_text())
  assert summary["num_frames"] == length and len(summary["top5"]) == 5
  assert [c["first_frame"] for c in summary["clips"]] == [0, 1]
  assert sorted(os.listdir(out / "figures")) == [
      "fig6_window0.png", "fig6_window1.png", "fig7_clip0.png", "timeline.png"]
  assert not [n for n in os.listdir(out) if n.startswith(".")]  # No temporary left.


def test_letterbox_moves_the_principal_point_and_maps_back():
  box = video_io.Letterbox((100, 160), (72, 128))  # Scale 0.72 -> 72x115, 6 px left and right.
  assert box.inner == (72, 115) and box.offset == (6, 0)
  k = np.array([[150.0, 0.0, 70.0], [0.0, 140.0, 45.0], [0.0, 0.0, 1.0]])
  points = np.array([[0.05, -0.02, 0.4], [-0.1, 0.03, 0.55]])
  project = lambda kk: (points @ kk.T)[:, :2] / points[:, 2:]
  in_input, in_network = project(k), project(box.intrinsics(k))
  sx, sy = 115 / 160, 72 / 100
  np.testing.assert_allclose(in_network, in_input * [sx, sy] + [6, 0], atol=1e-9)
  np.testing.assert_allclose(box.to_source(in_network), in_input, atol=1e-9)
  frame = np.full((100, 160, 3), 200, np.uint8)
  fitted = box.image(frame)
  assert fitted.shape == (72, 128, 3)
  assert (fitted[:, :6] == 0).all() and (fitted[:, 121:] == 0).all() and (fitted[:, 6:121] > 0).all()


_MEMORY_CHILD = r"""
import resource, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from conftest import load_config
from htt_jax import video_predict
from htt_jax.models import build_model, init_variables
config = load_config("smoke")
config.dataset.image_size = (32, 32)
config.model.num_frames, config.model.window, config.eval_batch_size = 4, 2, 16
shapes = jax.eval_shape(lambda r: init_variables(build_model(config), r, config), jax.random.key(0))
variables = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)
for name in sys.argv[1:]:
  video_predict.predict_video(config, None, name, name + ".out", intrinsics="200,200,160,120",
                              variables=variables, figures=False)
  print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def test_memory_does_not_grow_with_video_length(tmp_path):
  """Peak RSS (ru_maxrss: all the process's memory, FFmpeg's and XLA's buffers included, which
  tracemalloc would not see) over a 2,000-frame video stays within 1.2x of that over 500.

  One process runs the 500-frame video, then the 2,000-frame one: ru_maxrss never decreases, so
  the second figure is the peak of both runs and exceeds the first only if the long video needs
  more. Frames are 240x320 (225 KiB each): holding the long video's frames would add ~440 MiB,
  far above the 20% allowed.
  """
  for name, length in (("short.mp4", 500), ("long.mp4", 2000)):
    frames = moving_frames(8, 240, 320, noise=0)  # Smooth frames encode and decode fast.
    write_mp4(tmp_path / name, [frames[i % 8] for i in range(length)])
  run = subprocess.run(
      [sys.executable, "-c", _MEMORY_CHILD.format(tests=str(ROOT / "tests")),
       str(tmp_path / "short.mp4"), str(tmp_path / "long.mp4")],
      capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  short, long = [int(line.split()[1]) for line in run.stdout.splitlines()
                 if line.startswith("peak_kib")]
  with np.load(tmp_path / "long.mp4.out" / "predictions.npz") as f:
    assert len(f["frame_index"]) == 2000
  assert long <= 1.2 * short, (short, long)


def test_benchmark_video_mode(tmp_path):
  """scripts/benchmark.py --mode=video's row and table: end to end against the model alone."""
  from htt_jax.benchmark import runner  # pylint: disable=g-import-not-at-top
  config = load_config("benchmark", "runlocal")  # 72x128, T = t = 16, 1 warm-up + 2 timed
  config.model.hidden_dim, config.model.num_heads, config.model.mlp_dim = 64, 4, 128
  config.model.num_frames = config.model.window = 4
  config.timed_steps = 1
  output = str(tmp_path / "video.json")
  (row,) = runner.run_benchmark(config, "video", output)
  # batch_size 1 is rounded up to a whole block (2 clips); 2 x (1 + 1) batches of 2 x 4 frames.
  assert (row["video_batch_size"], row["video_frames"], row["video_size"]) == (2, 32, [144, 256])
  assert row["frames_per_second"] == pytest.approx(32 / row["video_wall_s"])
  assert row["fraction_of_model"] == pytest.approx(
      row["frames_per_second"] / row["model_frames_per_second"])
  for stage in ("decode", "model", "render"):
    assert row[f"{stage}_ms_per_frame"] > 0 and 0 < row[f"{stage}_share"] <= 1.0
  table = (tmp_path / "video.md").read_text()
  assert "end to end / model" in table and "144x256, 32" in table
