"""`predict_video`: HTT on a video file or a folder of frames, the job of
`scripts/predict_video.py` (docs/video.md).

Order: every check of the input (path, decodability, sizes, intrinsics) and of the checkpoint
(its parameters against the config's model: checkpointing.check_variables) comes before anything
is compiled; then the frames stream through `video.run_overlapped` (decode | model | collect and
draw overlay.mp4); then the figures are drawn into a hidden temporary folder, predictions.npz
and predictions.json are written, the figures replace figures/ as a whole, and overlay.mp4 is
renamed into place last. Every file goes through `storage` (atomic), so `output_dir` may be a
gs:// URL (overlay.mp4 is encoded to a local temporary file and uploaded once complete), and so
may the video. A rerun into the same `output_dir` leaves no output of the earlier run beside the
new ones: an old figures/ (or overlay.mp4) that this run does not write is removed once the run
has succeeded. If anything fails, the files this run wrote are removed, and so are the folders it
created (`output_dir` and any missing parents), so a failure leaves nothing behind.
"""

import contextlib
import json
import os
import secrets
import shutil
from typing import Optional

import numpy as np
from absl import logging

from htt_jax import checkpointing, config_lib, storage, video, video_io, video_render


def vocabulary(config, metadata: dict) -> dict:
  """Action and object names: the checkpoint's, the prepared data's, the demo data's; else {}."""
  counts = {"actions": config.model.num_actions, "objects": config.model.num_objects}
  candidates = [metadata.get("vocabulary")]
  data_dir = config.dataset.get("data_dir", "")
  if data_dir:
    from data_pipeline import schema  # pylint: disable=g-import-not-at-top
    for split in ("train", "test", "val"):
      with contextlib.suppress(OSError, ValueError):
        candidates.append(json.loads(storage.read_text(
            schema.manifest_path(data_dir, split))).get("vocabulary"))
        break
  if "demo_data" in config:
    from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
    with contextlib.suppress(TypeError, ValueError):
      candidates.append(synthetic.load_vocabulary(synthetic.from_fields(config.demo_data)))
  for names in candidates:
    if names and all(len(names.get(k) or []) == n for k, n in counts.items()):
      return {k: list(names[k]) for k in counts}
  return {"actions": None, "objects": None}


def _remove_output(path: str) -> None:
  """Removes an output if it exists: a file (or an object), or a folder with all it holds (on a
  URL a folder is only a prefix, gone with its objects)."""
  if storage.is_url(path):
    if storage.isdir(path):
      for name in storage.listdir(path):
        _remove_output(os.path.join(path, name))
    elif storage.exists(path):
      storage.remove(path)
  elif os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def _remove(path: str) -> None:
  """Removes an output of this run after a failure: best-effort, the run's own error comes out."""
  with contextlib.suppress(Exception):  # each client raises its own types
    _remove_output(path)


def _replace_folder(temporary: str, folder: str) -> None:
  """Puts the complete folder `temporary` in the place of `folder`, whose earlier contents go as a
  whole (a figure the earlier run drew and this one did not must not stay beside the new ones).
  Locally two renames, the old folder moved aside first and put back if the second fails; on a
  URL the earlier objects are removed, then the new ones renamed (storage.rename: copies)."""
  if storage.is_url(folder):
    _remove_output(folder)
    storage.rename(temporary, folder)
    return
  old = None
  if os.path.isdir(folder) and not os.path.islink(folder):
    old = os.path.join(os.path.dirname(folder),
                       f".{os.path.basename(folder)}.{secrets.token_hex(4)}.old")
    os.rename(folder, old)
  try:
    os.rename(temporary, folder)
  except BaseException:
    if old is not None:
      os.rename(old, folder)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _missing_folders(path: str) -> list:
  """`path` and those of its parents that do not exist yet, deepest first: the local folders
  that writing into `path` creates."""
  missing, path = [], os.path.abspath(path)
  while not os.path.lexists(path):
    missing.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


def _figures(folder: str, collector: video.Collector, arrays: dict, names: dict, fps: float,
             window: int) -> None:
  actions = names["actions"] or [str(i) for i in range(len(arrays["video_action_probs"]))]
  path = os.path.join(folder, "timeline.png")
  video_render.timeline(path, arrays["frame_index"], arrays["action_probs"],
                        arrays["video_action_probs"], actions, fps)
  for index in video.FIG7_CLIPS:
    clip = collector.figure_clips.get(index)
    if clip is None:
      continue
    probs = collector.clips[index]["action_probs"]
    best = int(np.argmax(probs))
    path = os.path.join(folder, f"fig7_clip{index}.png")
    video_render.fig7(
        path, clip["thumbnails"], clip["frame_numbers"], collector.clips[index]["attention"],
        clip["not_padding"], f"clip {index}: frames {collector.clips[index]['first_frame']}-"
        f"{collector.clips[index]['last_frame']}, action token's attention (last layer of A); "
        f"predicted {actions[best]} ({probs[best]:.2f})")
  clip = collector.figure_clips.get(0)
  for w in range(min(video.FIG6_WINDOWS, len(clip["pose_attention"]) if clip else 0)):
    frames = [j for j in range(w * window, (w + 1) * window) if j < clip["valid"]]
    if not frames:
      break
    shown = [frames[i] for i in video_render._spread(len(frames), video.FIG6_FRAMES)]  # pylint: disable=protected-access
    middle = frames[len(frames) // 2]
    path = os.path.join(folder, f"fig6_window{w}.png")
    video_render.fig6(
        path, [clip["thumbnails"][j] for j in shown],
        [clip["joints2d"][j] * clip["scale"] for j in shown], clip["joints3d"][middle],
        clip["pose_attention"][w][:len(frames), :len(frames)],
        [int(clip["frame_numbers"][j]) for j in shown],
        f"clip 0, window {w}: 2D projection, 3D pose of frame "
        f"#{int(clip['frame_numbers'][middle])}, final-layer attention of P")


def _summary(source, arrays: dict, collector: video.Collector, names: dict) -> dict:
  label = lambda kind, i: video_render.label(names[kind], i)
  probs = arrays["video_action_probs"]
  return {
      "video": source.path, "num_frames": int(len(arrays["frame_index"])),
      "fps": float(source.fps), "size": {"height": source.size[0], "width": source.size[1]},
      "names": "vocabulary" if names["actions"] else "indices",
      "top5": [{"action": int(c), "name": label("actions", int(c)),
                "probability": float(probs[c])} for c in np.argsort(-probs)[:5]],
      "clips": [{"clip": i, "first_frame": c["first_frame"], "last_frame": c["last_frame"],
                 "action": int(np.argmax(c["action_probs"])),
                 "name": label("actions", int(np.argmax(c["action_probs"]))),
                 "probability": float(np.max(c["action_probs"]))}
                for i, c in enumerate(collector.clips)],
  }


def prepare_input(config, video_path: str, intrinsics: Optional[str] = None,
                  fps: Optional[float] = None):
  """(source, letterbox, network intrinsics (3, 3)): every check of the input, nothing decoded
  beyond the first frame (the folder's headers)."""
  source = video_io.open_source(video_path, fps)
  # `is not None`: an empty --intrinsics= (an unset shell variable) is a malformed camera, not
  # a request for the default one.
  camera = (video_io.parse_intrinsics(intrinsics) if intrinsics is not None
            else video_io.default_intrinsics(config, source.size))
  letterbox = video_io.Letterbox(source.size, tuple(config.dataset.image_size))
  return source, letterbox, letterbox.intrinsics(camera)


def predict_video(config, checkpoint_dir: Optional[str], video_path: str, output_dir: str,
                  intrinsics: Optional[str] = None, fps: Optional[float] = None,
                  step: Optional[int] = None, variables=None, overlay: bool = True,
                  figures: bool = True, timer: Optional[video.Timer] = None,
                  predictor=None) -> dict:
  """Runs the model on every frame; writes the outputs; returns predictions.json's content.

  `variables` (with `checkpoint_dir=None`) skips the restore (tests, the benchmark); `predictor`,
  an `inference.Predictor` of those variables with whole blocks per batch, one already compiled
  (the benchmark).
  """
  config_lib.validate_config(config)
  source, letterbox, camera = prepare_input(config, video_path, intrinsics, fps)
  if variables is None:
    variables, metadata = checkpointing.restore_variables(checkpoint_dir, step, config)
  else:
    metadata = {}
    checkpointing.check_variables(variables, config, checkpoint_dir or "variables")
  names = vocabulary(config, metadata)
  from htt_jax import inference  # pylint: disable=g-import-not-at-top  (JAX)
  spacing, t_clip = config.dataset.spacing, config.model.num_frames
  batch_size = -(-config.eval_batch_size // spacing) * spacing  # whole blocks per batch
  timer = timer or video.Timer()

  # Local folders are created by the write probe below (the missing parents too), so which ones
  # this run creates is decided first; a URL has no folders to create or remove.
  created = [] if storage.is_url(output_dir) else _missing_folders(output_dir)
  written = []
  try:
    # A missing bucket or no permission to write: before anything is compiled.
    storage.check_writable(output_dir)
    if predictor is None:
      predictor = inference.Predictor(config, variables, batch_size=batch_size)
    storage.makedirs(output_dir)
    with contextlib.ExitStack() as stack:
      writer = None
      if overlay:
        temporary = stack.enter_context(
            storage.replacing(os.path.join(output_dir, "overlay.mp4")))
        writer = video_io.OverlayWriter(temporary, source.size, source.fps, source.times)
      collector = video.Collector(letterbox, names, writer, t_clip, config.model.window)
      batches = video.iter_batches(video.iter_blocks(source, letterbox, t_clip, spacing),
                                   batch_size // spacing, camera)
      try:
        video.run_overlapped(batches, predictor.stream, collector, timer)
      finally:
        if writer is not None:
          writer.close()
      arrays = collector.arrays()
      summary = _summary(source, arrays, collector, names)
      folder = os.path.join(output_dir, "figures")
      if figures:
        # Drawn aside and put in place as a whole below, so figures/ never mixes two runs.
        temporary = os.path.join(output_dir, f".figures.{secrets.token_hex(4)}.tmp")
        written.append(temporary)
        _figures(temporary, collector, arrays, names, float(source.fps), config.model.window)
      for name, write in (("predictions.npz", lambda p: storage.save_npz(p, arrays)),
                          ("predictions.json", lambda p: storage.write_json(p, summary))):
        written.append(os.path.join(output_dir, name))
        write(written[-1])
      if figures:
        # On a URL the figures are copied into figures/ one object at a time: a failure midway
        # leaves part of them, which the cleanup below must remove too.
        written.append(folder)
        _replace_folder(temporary, folder)
        written.remove(temporary)
      else:
        _remove_output(folder)  # An earlier run's figures would read as this run's.
      if not overlay:
        _remove_output(os.path.join(output_dir, "overlay.mp4"))
      # Leaving the stack renames overlay.mp4 into place: the last file, once all the rest exist.
  except BaseException:
    for path in reversed(written):
      _remove(path)
    for path in created:  # Deepest first; a folder something else has written into stays.
      try:
        os.rmdir(path)
      except OSError:
        break
    raise
  top = summary["top5"][0]
  logging.info("%s: %d frames, %d clips; video action %s (%.2f); outputs in %s", video_path,
               summary["num_frames"], len(summary["clips"]), top["name"], top["probability"],
               output_dir)
  return summary
