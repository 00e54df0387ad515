"""Pictures of a video's predictions: the overlay frame (Pillow, fast enough to keep up with the
model) and the figures (Matplotlib): the action timeline, the paper's Fig. 7 (the action token's
final-layer attention over a clip's frames) and Fig. 6 (a window's frames with the 2D projection,
the 3D pose, the final-layer attention of P).

Joints are in the project's order (data_pipeline/fpha.py): wrist, then thumb, index, middle, ring,
pinky from MCP to tip; 42 joints are two such hands (left 0-20, right 21-41, H2O).
"""

import functools
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from htt_jax import storage

# One colour per finger (thumb..pinky), as hand-pose code usually draws them.
FINGER_COLOURS = ((230, 50, 50), (240, 170, 30), (60, 190, 60), (40, 140, 230), (170, 70, 220))
HAND_JOINTS = 21


def bones(num_joints: int) -> List[tuple]:
  """(parent, child, finger) for every bone of every hand."""
  out = []
  for hand in range(num_joints // HAND_JOINTS):
    base = hand * HAND_JOINTS
    for finger in range(5):
      chain = [base] + [base + 1 + 4 * finger + k for k in range(4)]
      out += [(a, b, finger) for a, b in zip(chain[:-1], chain[1:])]
  return out


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


@functools.lru_cache(maxsize=1024)
def _glyph(char: str, size: int) -> np.ndarray:
  """(line height, advance) uint8 coverage of one character, rendered once: drawing text with
  FreeType on every frame cost more than the rest of the overlay."""
  font = _font(size)
  height = size + size // 3
  width = max(1, round(font.getlength(char)))
  image = Image.new("L", (width, height))
  ImageDraw.Draw(image).text((0, 0), char, fill=255, font=font)
  return np.asarray(image)


def _stamp_text(out: np.ndarray, lines: Sequence[str], size: int) -> None:
  """White text lines on black bands at the top left of `out` (H, W, 3), in place."""
  y = 2
  for line in lines:
    mask = np.concatenate([_glyph(c, size) for c in line], axis=1)
    h, w = mask.shape
    h, w = min(h, out.shape[0] - y - 1), min(w, out.shape[1] - 6)
    if h <= 0 or w <= 0:
      return
    out[y:y + h + 1, 2:w + 6] = 0
    out[y:y + h, 4:4 + w] = mask[:h, :w, None]
    y += h + 2


def draw_skeleton(draw: ImageDraw.ImageDraw, joints2d: np.ndarray, width: int) -> None:
  for a, b, finger in bones(len(joints2d)):
    draw.line([tuple(joints2d[a]), tuple(joints2d[b])], fill=FINGER_COLOURS[finger], width=width)
  r = max(1.0, width * 0.8)
  for u, v in joints2d:
    draw.ellipse([u - r, v - r, u + r, v + r], fill=(255, 255, 255))


def overlay_frame(frame: np.ndarray, joints2d: np.ndarray, lines: Sequence[str]) -> np.ndarray:
  """The input frame with the skeleton (bones coloured per finger) and text lines at the top left
  on black bands."""
  image = Image.fromarray(frame)
  height = frame.shape[0]
  draw_skeleton(ImageDraw.Draw(image), np.nan_to_num(joints2d), max(1, round(height / 120)))
  out = np.array(image)
  _stamp_text(out, lines, max(9, height // 28))
  return out


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path: str) -> None:
  storage.save_figure(path, fig, dpi=fig.dpi)
  plt.close(fig)


def timeline(path: str, frame_index: np.ndarray, action_probs: np.ndarray,
             video_probs: np.ndarray, names: Sequence[str], fps: float, top: int = 5) -> None:
  """Probabilities of the video's `top` actions over time (each frame: its clip's)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 2.6), dpi=90)
  seconds = np.asarray(frame_index) / fps
  for c in np.argsort(-video_probs)[:top]:
    ax.plot(seconds, action_probs[:, c], lw=1.5, label=f"{names[c]} ({video_probs[c]:.2f})")
  ax.set_xlabel("time (s)")
  ax.set_ylabel("action probability")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="video (soft vote)",
            title_fontsize=7)
  fig.tight_layout()
  _save(plt, fig, path)


def fig7(path: str, thumbnails: Dict[int, np.ndarray], frame_numbers: np.ndarray,
         attention: np.ndarray, not_padding: np.ndarray, title: str, strip: int = 8) -> None:
  """Fig. 7: a strip of the clip's frames, and the action token's final-layer attention over all
  T frames of the clip (its row of A's last attention map, the token itself left out)."""
  plt = _pyplot()
  valid = int(not_padding.sum())
  shown = [i for i in _spread(valid, strip) if i in thumbnails]
  fig = plt.figure(figsize=(7, 2.9), dpi=90)
  grid = fig.add_gridspec(2, max(1, len(shown)), height_ratios=(1.2, 1.0))
  for col, i in enumerate(shown):
    ax = fig.add_subplot(grid[0, col])
    ax.imshow(thumbnails[i])
    ax.set_title(f"#{frame_numbers[i]}", fontsize=7)
    ax.axis("off")
  ax = fig.add_subplot(grid[1, :])
  ax.bar(np.arange(valid), attention[:valid], color="tab:red", width=0.9)
  for i in shown:
    ax.axvline(i, color="grey", lw=0.5, alpha=0.6)
  ax.set_xlim(-0.5, valid - 0.5)
  ax.set_xlabel("frame of the clip (every 2nd frame of the video)", fontsize=8)
  ax.set_ylabel("attention", fontsize=8)
  ax.tick_params(labelsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(plt, fig, path)


def fig6(path: str, thumbnails: Sequence[np.ndarray], joints2d: Sequence[np.ndarray],
         joints3d: np.ndarray, attention: np.ndarray, frame_numbers: Sequence[int],
         title: str) -> None:
  """Fig. 6: frames of one window with the 2D projection, the 3D pose of its middle frame, and the
  final-layer self-attention of P inside the window (t x t, mean over heads)."""
  plt = _pyplot()
  n = len(thumbnails)
  aspect = thumbnails[0].shape[0] / thumbnails[0].shape[1]  # frames sized to fill their row
  fig = plt.figure(figsize=(1.9 * n + 4.6, max(2.3, 1.9 * aspect + 0.9)), dpi=90)
  grid = fig.add_gridspec(1, n + 2, width_ratios=[1.0] * n + [1.3, 1.2])
  for col, (image, points, number) in enumerate(zip(thumbnails, joints2d, frame_numbers)):
    ax = fig.add_subplot(grid[0, col])
    ax.imshow(image)
    for a, b, finger in bones(len(points)):
      ax.plot(points[[a, b], 0], points[[a, b], 1], color=np.array(FINGER_COLOURS[finger]) / 255,
              lw=1.2)
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_title(f"#{number}", fontsize=8)
    ax.axis("off")
  ax = fig.add_subplot(grid[0, n], projection="3d")
  for a, b, finger in bones(len(joints3d)):
    # Camera space (x right, y down, z forward) shown with y up.
    ax.plot(joints3d[[a, b], 0], joints3d[[a, b], 2], -joints3d[[a, b], 1],
            color=np.array(FINGER_COLOURS[finger]) / 255, lw=1.5)
  ax.set_xlabel("x", fontsize=7)
  ax.set_ylabel("z", fontsize=7)
  ax.set_zlabel("-y", fontsize=7)
  ax.tick_params(labelsize=5)
  ax.set_title("3D pose (m)", fontsize=8)
  ax = fig.add_subplot(grid[0, n + 1])
  image = ax.imshow(attention, cmap="viridis", vmin=0)
  ax.set_title("P attention (last layer)", fontsize=8)
  ax.set_xlabel("key frame", fontsize=7)
  ax.set_ylabel("query frame", fontsize=7)
  ax.tick_params(labelsize=6)
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(plt, fig, path)


def _spread(count: int, limit: int) -> List[int]:
  if count <= limit:
    return list(range(count))
  return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def thumbnail(frame: np.ndarray, height: int = 120) -> tuple:
  """(image no taller than `height`, its scale) for the figures."""
  scale = min(1.0, height / frame.shape[0])
  if scale == 1.0:
    return frame, 1.0
  size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
  return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR)), scale


def label(names: Optional[Sequence[str]], index: int) -> str:
  return names[index] if names and index < len(names) else str(index)
