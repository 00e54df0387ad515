"""Bad inputs to predict_video: each a clear error naming the file, raised before the model is
built where the input can tell, and no outputs left behind."""

import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_config
from htt_jax import checkpointing, config_lib, inference, video_predict
from htt_jax.models import build_model, init_variables
from test_video import moving_frames, write_mp4


@pytest.fixture(scope="module")
def tiny():
  """A model small enough to compile in seconds (32x32 frames, T=4, t=2) and its variables."""
  config = load_config("smoke")
  config.dataset.image_size = (32, 32)
  config.model.num_frames, config.model.window = 4, 2
  shapes = jax.eval_shape(lambda r: init_variables(build_model(config), r, config),
                          jax.random.key(0))
  return config, jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), shapes)


@pytest.fixture
def no_model(monkeypatch):
  """Fails the test if the model is built: these errors must come before any compilation."""
  def refuse(*args, **kwargs):
    raise AssertionError("the model was built before the input was checked")
  monkeypatch.setattr(inference.Predictor, "__init__", refuse)


def _fails(tiny, path, out, match, error=config_lib.ConfigError, **kwargs):
  config, variables = kwargs.pop("setup", tiny)
  with pytest.raises(error, match=match):
    video_predict.predict_video(config, kwargs.pop("checkpoint_dir", None), str(path), str(out),
                                variables=kwargs.pop("variables", variables), **kwargs)
  assert not os.path.exists(out), os.listdir(out)


def _folder(path, sizes):
  path.mkdir()
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(np.full((h, w, 3), 40 * i % 250, np.uint8)).save(path / f"{i:03d}.png")
  return path


def test_errors_found_before_the_model(tiny, no_model, tmp_path):
  out = tmp_path / "out"
  _fails(tiny, tmp_path / "nope.mp4", out, r"nope\.mp4: no such video file",
         error=FileNotFoundError)
  (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
  _fails(tiny, tmp_path / "notes.mp4", out, r"notes\.mp4: not a video FFmpeg can decode")
  (tmp_path / "empty").mkdir()
  _fails(tiny, tmp_path / "empty", out, r"empty: the folder holds no frames")
  _fails(tiny, _folder(tmp_path / "mixed", [(40, 64), (40, 64), (48, 64)]), out,
         r"mixed: frames of different sizes: 000\.png is 64x40, 002\.png is 64x48")
  _fails(tiny, _folder(tmp_path / "small", [(24, 40)] * 3), out,
         r"small: frames are 40x24 \(WxH\), smaller than the backbone's stride of 32 px")
  video = _folder(tmp_path / "good", [(40, 64)] * 3)
  for text in ("", "1,2,3", "a,b,c,d", "0,100,20,20", "100,100,nan,20"):
    _fails(tiny, video, out, r"--intrinsics=.*expected four numbers fx,fy,cx,cy",
           intrinsics=text)
  for fps in (0.0, -30.0, float("nan"), 0.0001):  # 0.0001 would be written as a rate of 0
    _fails(tiny, video, out, rf"--fps={fps} must be a number of frames per second of at least "
           r"0\.001", fps=fps)
  with av.open(str(tmp_path / "zero.mp4"), "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.start_encoding()  # The header, a video track, and no frame.
  _fails(tiny, tmp_path / "zero.mp4", out, r"zero\.mp4: the video has zero frames")


def test_checkpoint_whose_heads_do_not_match(tiny, no_model, tmp_path):
  config, variables = tiny
  ckpt = tmp_path / "ckpt"
  checkpointing.save_variables(str(ckpt), variables, step=1, metadata={})
  other = config.copy_and_resolve_references()
  other.model.num_actions = 5
  _fails(tiny, _folder(tmp_path / "good", [(40, 64)] * 3), tmp_path / "out",
         r"ckpt: the checkpoint's parameters do not match the config .*num_actions=5.*"
         r"action_classifier.*checkpoint \(\d+, 16\), config \(\d+, 5\)",
         setup=(other, None), checkpoint_dir=str(ckpt), variables=None)


def _damaged_mp4s(folder):
  """(data, packet ends) of a 40-frame mp4 written to `folder`/good.mp4, and bad.mp4: the same
  with garbage after the 20th packet, which opens but fails part-way through decoding."""
  frames = moving_frames(40, 48, 64, noise=255)  # Noise: many bytes per frame, easy to cut.
  write_mp4(folder / "good.mp4", frames, faststart=True)
  data = (folder / "good.mp4").read_bytes()
  with av.open(str(folder / "good.mp4")) as container:
    ends = [p.pos + p.size for p in container.demux(container.streams.video[0]) if p.size]
  middle = bytearray(data)
  middle[ends[19]:ends[19] + 3000] = b"\xff" * 3000
  (folder / "bad.mp4").write_bytes(bytes(middle))
  return data, ends


def test_corrupt_and_truncated_videos_fail_naming_the_frame(tiny, tmp_path):
  data, ends = _damaged_mp4s(tmp_path)
  # Cut exactly after the 20th packet: FFmpeg decodes 20 frames and stops without an error.
  (tmp_path / "cut.mp4").write_bytes(data[:ends[19]])
  _fails(tiny, tmp_path / "cut.mp4", tmp_path / "out",
         r"cut\.mp4: the video is truncated: 20 frames decoded, the stream declares 40")
  # Garbage in the middle: decoding fails part-way.
  _fails(tiny, tmp_path / "bad.mp4", tmp_path / "out",
         r"bad\.mp4: the video is corrupt or truncated: decoding failed at frame \d+")
  # An output folder that existed keeps what it held, and nothing else.
  (tmp_path / "kept").mkdir()
  (tmp_path / "kept" / "mine.txt").write_text("x")
  with pytest.raises(config_lib.ConfigError, match="decoding failed at frame"):
    video_predict.predict_video(tiny[0], None, str(tmp_path / "bad.mp4"),
                                str(tmp_path / "kept"), variables=tiny[1])
  assert os.listdir(tmp_path / "kept") == ["mine.txt"]


def test_a_failure_removes_the_parent_folders_it_created(tiny, tmp_path):
  """--output_dir=a/n1/n2/n3 with only a/ there: a failure after the folders were made removes
  n3, n2 and n1, and keeps a/ (and what it holds), which the run did not create."""
  _damaged_mp4s(tmp_path)
  existing = tmp_path / "a"
  existing.mkdir()
  (existing / "mine.txt").write_text("x")
  with pytest.raises(config_lib.ConfigError, match=r"bad\.mp4: .*decoding failed at frame"):
    video_predict.predict_video(tiny[0], None, str(tmp_path / "bad.mp4"),
                                str(existing / "n1" / "n2" / "n3"), variables=tiny[1])
  assert os.listdir(existing) == ["mine.txt"]


def test_a_rerun_leaves_no_output_of_the_earlier_run(tiny, tmp_path):
  """Into the same output folder: a 40-frame video (fig7_clip2.png among its figures), then a
  single frame (no clip 2), then the same without figures or overlay: each time the folder holds
  this run's outputs only, and no temporary."""
  config, variables = tiny
  spacing = config.dataset.spacing
  predictor = inference.Predictor(config, variables,
                                  batch_size=-(-config.eval_batch_size // spacing) * spacing)
  run = lambda video, **kwargs: video_predict.predict_video(
      config, None, str(video), str(out), variables=variables, predictor=predictor, **kwargs)
  out = tmp_path / "out"
  write_mp4(tmp_path / "long.mp4", moving_frames(40, 48, 64))
  run(tmp_path / "long.mp4")
  assert "fig7_clip2.png" in os.listdir(out / "figures")
  single = _folder(tmp_path / "single", [(48, 64)])
  summary = run(single)
  assert len(summary["clips"]) == 1
  assert sorted(os.listdir(out)) == [
      "figures", "overlay.mp4", "predictions.json", "predictions.npz"]
  assert sorted(os.listdir(out / "figures")) == [
      "fig6_window0.png", "fig7_clip0.png", "timeline.png"]
  run(single, figures=False, overlay=False)
  assert sorted(os.listdir(out)) == ["predictions.json", "predictions.npz"]


def _script(tmp_path, *flags):
  """scripts/predict_video.py's exit status and stderr's last line; its output folder must not
  exist afterwards."""
  run = subprocess.run(
      [sys.executable, "scripts/predict_video.py", "--config=configs/smoke.py",
       f"--checkpoint_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}", *flags],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  assert not (tmp_path / "out").exists()
  return run.returncode, run.stderr.strip().splitlines()[-1]


def test_script_prints_one_error_line(tmp_path):
  assert _script(tmp_path, f"--video={tmp_path / 'missing.mov'}") == (
      1, f"error: {tmp_path / 'missing.mov'}: no such video file or frame folder")


def test_script_names_an_empty_video_file(tmp_path):
  """A zero-byte file: FFmpeg's probe fails with a bare OSError (EINVAL), not an FFmpegError."""
  (tmp_path / "zero.mp4").write_bytes(b"")
  assert _script(tmp_path, f"--video={tmp_path / 'zero.mp4'}") == (
      1, f"error: {tmp_path / 'zero.mp4'}: the file is empty (0 bytes), expected a video FFmpeg "
      "can decode")


def test_script_refuses_an_empty_intrinsics_flag(tmp_path):
  """--intrinsics= (an unset shell variable) is a malformed camera, not the default one."""
  video = _folder(tmp_path / "good", [(40, 64)] * 3)
  assert _script(tmp_path, f"--video={video}", "--intrinsics=") == (
      1, "error: --intrinsics='': expected four numbers fx,fy,cx,cy in pixels of the input "
      "(fx, fy > 0), e.g. --intrinsics=1395.7,1395.7,935.7,540.7")


@pytest.mark.parametrize("stage", ["decode", "model", "render"])
def test_a_failing_stage_stops_the_others_and_raises_its_error(stage):
  """No thread left waiting on a queue: the error of whichever stage fails comes out."""
  from htt_jax import video  # pylint: disable=g-import-not-at-top

  def batches():
    for i in range(50):
      if stage == "decode" and i == 7:
        raise ValueError("decode failed")
      yield {"i": i}

  def model(inputs):
    for batch in inputs:
      if stage == "model" and batch["i"] == 5:
        raise ValueError("model failed")
      yield {"o": batch["i"]}

  seen = []

  def consume(batch, outputs):
    if stage == "render" and batch["i"] == 3:
      raise ValueError("render failed")
    assert outputs["o"] == batch["i"]
    seen.append(batch["i"])

  with pytest.raises(ValueError, match=f"{stage} failed"):
    video.run_overlapped(batches(), model, consume, video.Timer())
  assert seen == list(range(len(seen)))  # In order, and nothing after the failure's batch.
  video.run_overlapped(iter([{"i": 0}, {"i": 1}]), model if stage != "model" else (
      lambda inputs: ({"o": b["i"]} for b in inputs)), lambda b, o: seen.append(-1),
                       video.Timer())


def _encode(container, size, frames, first_pts=0, rate=25):
  """H.264 frames into an open PyAV output container, pts first_pts, first_pts + 1, ..."""
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  stream = container.add_stream("libx264", rate=rate)
  stream.height, stream.width = size
  stream.pix_fmt = "yuv420p"
  for i, array in enumerate(frames):
    frame = av.VideoFrame.from_ndarray(array, format="rgb24")
    frame.pts, frame.time_base = first_pts + i, Fraction(1, rate)
    for packet in stream.encode(frame):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)


def _decoded(path):
  from htt_jax import video_io  # pylint: disable=g-import-not-at-top
  return list(video_io.open_source(str(path)))


def test_what_ffmpeg_decodes_silently_is_judged_by_time_and_size(tmp_path):
  """Cases FFmpeg decodes without an error (video_io.AvSource): a stream whose size changes
  part-way, a trimmed mp4 (an edit list: more samples than frames shown; was refused as
  truncated), a Matroska file cut short (it counts no frames; was accepted)."""
  import io  # pylint: disable=g-import-not-at-top
  # Two MPEG-TS parts of different sizes, one after the other (a stream that changes resolution).
  parts = []
  for size, first in (((48, 64), 0), ((64, 96), 12)):
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
      _encode(container, size, moving_frames(12, *size), first_pts=first)
    parts.append(buffer.getvalue())
  (tmp_path / "sizes.ts").write_bytes(b"".join(parts))
  with pytest.raises(config_lib.ConfigError, match=r"sizes\.ts: the frame size changes at frame "
                     r"12: 96x64, the video starts at 64x48 \(WxH\)"):
    _decoded(tmp_path / "sizes.ts")
  # pts from -3: the muxer writes an edit list that hides the first 3 of 20 samples.
  with av.open(str(tmp_path / "trimmed.mp4"), "w") as container:
    _encode(container, (48, 64), moving_frames(20, 48, 64), first_pts=-3)
  with av.open(str(tmp_path / "trimmed.mp4")) as container:
    assert container.streams.video[0].frames == 20
  assert len(_decoded(tmp_path / "trimmed.mp4")) == 17
  # Matroska: 40 frames, the file cut at 60% of its bytes; its header still says 1.6 s.
  with av.open(str(tmp_path / "full.mkv"), "w") as container:
    _encode(container, (48, 64), moving_frames(40, 48, 64, noise=255))
  assert len(_decoded(tmp_path / "full.mkv")) == 40
  data = (tmp_path / "full.mkv").read_bytes()
  (tmp_path / "cut.mkv").write_bytes(data[:int(len(data) * 0.6)])
  with pytest.raises(config_lib.ConfigError, match=r"cut\.mkv: the video is truncated: \d+ frames "
                     r"decoded, 0\.\d\d s of the 1\.60 s the file declares"):
    _decoded(tmp_path / "cut.mkv")
  # A Matroska header and no frame (an interrupted recording): FFmpeg's EOFError when opened.
  container = av.open(str(tmp_path / "empty.mkv"), "w", format="matroska")
  stream = container.add_stream("libx264", rate=25)
  stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
  container.start_encoding()
  container.close()
  with pytest.raises(config_lib.ConfigError, match=r"empty\.mkv: the video has zero frames \(the "
                     r"file ends after its header\)$"):
    _decoded(tmp_path / "empty.mkv")


def test_frame_folders_numbered_without_zeros_and_16_bit_grey(tmp_path):
  """1.png, 2.png, ..., 10.png (FFmpeg's %d.png) run in number order (were 1, 10, 11, 2, ...);
  16-bit greyscale PNGs keep their values (Pillow's convert('RGB') clipped them to white)."""
  frames = moving_frames(12, 40, 64)
  (tmp_path / "numbered").mkdir()
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(tmp_path / "numbered" / f"{i + 1}.png")
  np.testing.assert_array_equal(np.stack(_decoded(tmp_path / "numbered")), np.stack(frames))
  (tmp_path / "grey16").mkdir()
  grey = frames[0][..., 0]
  Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16" / "000.png")
  assert Image.open(tmp_path / "grey16" / "000.png").mode == "I;16"
  (decoded,) = _decoded(tmp_path / "grey16")
  np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=-1))


@pytest.mark.parametrize("degrees", [90, -90])
def test_a_display_rotation_turns_the_frames_upright(tmp_path, degrees):
  """A phone's portrait video is stored landscape with a display matrix; FFmpeg's documentation
  (av_display_rotation_get) gives its angle counterclockwise. The frames reach the model as a
  player shows them: the stored frames (as PyAV decodes them, rotation not applied) turned by that
  angle (np.rot90: counterclockwise), and the source's size is the upright one (was: frames as
  stored, the overlay sideways)."""
  from htt_jax import video_io  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "turned.mp4")
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
    stream.set_display_rotation(degrees)
    for frame in moving_frames(6, 48, 64):
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  with av.open(path) as container:
    stored = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
  assert stored[0].shape == (48, 64, 3)
  source = video_io.open_source(path)
  assert source.size == (64, 48)
  for a, b in zip(stored, source, strict=True):
    np.testing.assert_array_equal(b, np.rot90(a, degrees // 90))
    assert b.flags["C_CONTIGUOUS"]


def test_a_variable_frame_rate_overlay_keeps_the_source_times(tiny, tmp_path):
  """Phones record a variable frame rate: frames at irregular times (here 40 ms steps with two
  pauses). overlay.mp4's frames keep the source's times (before, every frame was placed at
  n / average rate: frame 6 at 0.24 s instead of 0.60 s); a constant-rate video's stay n / fps."""
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  times_ms = [0, 40, 80, 200, 240, 280, 600, 640, 680, 720, 760, 800]
  path = tmp_path / "vfr.mp4"
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    for t, frame in zip(times_ms, moving_frames(len(times_ms), 48, 64)):
      picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
      picture.pts, picture.time_base = t, Fraction(1, 1000)
      for packet in stream.encode(picture):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)

  def frame_times(video):
    with av.open(str(video)) as container:
      stream = container.streams.video[0]
      return [float(f.pts * stream.time_base) for f in container.decode(stream)]

  assert frame_times(path) == pytest.approx([t / 1000 for t in times_ms])
  video_predict.predict_video(tiny[0], None, str(path), str(tmp_path / "out"), variables=tiny[1],
                              figures=False)
  assert frame_times(tmp_path / "out" / "overlay.mp4") == pytest.approx(
      [t / 1000 for t in times_ms], abs=1e-4)
  # --fps replaces the video's rate and so its times: frame n at n / fps.
  video_predict.predict_video(tiny[0], None, str(path), str(tmp_path / "fixed"),
                              variables=tiny[1], figures=False, fps=10)
  assert frame_times(tmp_path / "fixed" / "overlay.mp4") == pytest.approx(
      [n / 10 for n in range(len(times_ms))], abs=1e-4)
