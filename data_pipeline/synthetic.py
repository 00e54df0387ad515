"""Procedural egocentric hand-object videos: the embedded default dataset (`make demo`).

Every video is a pure function of (config, split, index): `iter_videos` computes the annotations
(joints, labels, camera) up front and `load_image(i)` renders frame i on demand with PIL, so
nothing large is held and the same seed gives the same pixels.

Scene (camera space: x right, y down, z forward, metres):
  camera   pinhole with FPHA's field of view (fx = 0.727 W, as 348.9 px at 480 px wide), principal
           point slightly off centre; one intrinsics for every video, for the stored image size.
  hand     21 joints in FPHA order (wrist; thumb, index, middle, ring, pinky, each MCP, PIP, DIP,
           TIP) built by forward kinematics: fixed palm points + unit-direction phalanges, so bone
           lengths are exactly constant within a video. A subject has its own hand size (+-3%)
           and proportions (finger lengths +-5-6%). One camera sees a hand of unknown size, so its
           depth is ambiguous by about that fraction: +-10% (+-48 mm at 0.48 m) was as large as
           the scenes' whole depth spread and made depth unlearnable for held-out subjects. Two hands (num_hands=2) give 42 joints, left 0-20 and right 21-41 (H2O);
           the right hand acts, the left idles beside it (a mirrored skeleton).
  object   one class per video (box, ball, bottle, cup, can, book): distinct shape and colour, drawn
           as a camera-facing sprite at its depth, with asymmetric marks so its rotation shows.
  action   verb x object, index = verb_index * num_objects + object_index. Verbs come in opposite
           pairs that play ONE motion forwards or backwards in time: grab/place (reach, grasp,
           lift / lower, release, withdraw), open/close (grasp and twist counter-clockwise / twist
           clockwise and release), push/pull (slide away from / towards the camera). Every per-frame
           quantity (pose, object, occluder, finger wiggle) is a function of the motion phase, so a
           video of the opposite verb with the same random draws is the exact time reversal of
           this one, pixels included: a single frame cannot tell the verb, only the order can.
  subject  the split unit: hand size and proportions, skin colour, sleeve colour, motion style
           (speed profile, amplitude, tremor), background style (wall, table, clutter palette).
           Splits use disjoint subjects, so test measures generalisation to new people and rooms.
  render   background (cached per video; walls, table, clutter, sleeves and occluders in muted
           colours, `scene_saturation`) + object + forearm, palm and fingers as thick outlined
           lines and joint discs, shaded darker with depth; in some videos an occluder patch covers
           part of the hand for a stretch of frames.
"""

import dataclasses
from typing import Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data_pipeline.video import Video

SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# verb -> (motion, forward?): the second of a pair is the first played backwards.
VERBS = {"grab": ("lift", True), "place": ("lift", False), "open": ("twist", True),
         "close": ("twist", False), "push": ("slide", True), "pull": ("slide", False)}
# object -> (RGB, half depth in metres: how far in front of the palm its centre sits when held).
# The cup is magenta, not red: a red cup was the object most often taken for the orange box.
OBJECTS = {"box": ((220, 130, 30), 0.040), "ball": ((30, 90, 230), 0.045),
           "bottle": ((30, 170, 60), 0.030), "cup": ((200, 40, 190), 0.040),
           "can": ((175, 180, 195), 0.033), "book": ((140, 55, 180), 0.025)}
# Skin tones a subject's colour is interpolated between (light to dark).
_SKIN = np.array([[240, 200, 170], [215, 165, 125], [180, 125, 85], [125, 85, 55], [85, 55, 38]])
# Right hand, scale 1, hand frame: x thumb side, y along the fingers, z palm normal. Row 0 is the
# thumb's first joint (FPHA joint 1), rows 1-4 the index..pinky MCPs.
_BASE = np.array([[0.021, 0.026, 0.012], [0.024, 0.086, 0.0], [0.003, 0.089, 0.0],
                  [-0.017, 0.083, 0.0], [-0.034, 0.073, 0.0]])
_PHALANX = np.array([[0.038, 0.032, 0.027], [0.040, 0.024, 0.020], [0.045, 0.028, 0.022],
                     [0.042, 0.026, 0.021], [0.033, 0.019, 0.018]])
_SPLAY = np.array([0.0, 0.14, 0.03, -0.09, -0.22])  # radians about the palm normal, open hand
_FLEX = np.array([[0.3, 0.45, 0.5], [0.75, 1.05, 0.65], [0.8, 1.1, 0.7], [0.85, 1.15, 0.75],
                  [0.9, 1.15, 0.75]])  # per joint, at a full grasp: around a big object
_THUMB_DIR = np.array([0.75, 0.55, 0.37]) / np.linalg.norm([0.75, 0.55, 0.37])
_THUMB_TO = np.array([-0.55, 0.35, 0.76]) - _THUMB_DIR * np.dot([-0.55, 0.35, 0.76], _THUMB_DIR)
_THUMB_TO /= np.linalg.norm(_THUMB_TO)
_GRASP = np.array([0.0, 0.11, 0.035])  # held object's centre, hand frame, plus its half depth


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What to generate. `num_videos`: per split, or one number for every split."""
  seed: int = 0
  num_videos: Union[int, Mapping[str, int]] = dataclasses.field(
      default_factory=lambda: {"train": 96, "val": 16, "test": 32})
  num_subjects: Mapping[str, int] = dataclasses.field(
      default_factory=lambda: {"train": 8, "val": 2, "test": 4})
  frames: Tuple[int, int] = (24, 48)  # raw frames per video, inclusive range
  image_size: Tuple[int, int] = (72, 128)  # stored (H, W)
  num_hands: int = 1
  verbs: Tuple[str, ...] = ("grab", "place", "open", "close")
  objects: Tuple[str, ...] = ("box", "ball", "bottle", "cup")
  occlusion_prob: float = 0.5  # fraction of videos with an occluder over the hand for a while
  # Object sprites and half depths are scaled by this: big objects, still visible around the hand
  # that holds them.
  object_scale: float = 1.3
  # Saturation of the scene's own colours (walls, table, sleeves, occluders; the clutter gets 0.35
  # of it) around their grey: 1 draws them from the whole RGB cube, so that a red wall or an orange
  # sleeve looks like an object to a network trained from random weights in a few hundred steps
  # (docs/demo.md); 0.35 leaves the objects and the skin the only vivid colours.
  scene_saturation: float = 0.35

  def __post_init__(self):
    bad = [v for v in self.verbs if v not in VERBS] + [o for o in self.objects if o not in OBJECTS]
    repeated = len(set(self.verbs)) < len(self.verbs) or len(set(self.objects)) < len(self.objects)
    if bad or repeated or not self.verbs or not self.objects:
      raise ValueError(f"verbs must be distinct names from {list(VERBS)} and objects from "
                       f"{list(OBJECTS)}; got verbs={self.verbs}, objects={self.objects}")
    if self.num_hands not in (1, 2) or self.seed < 0 or not 2 <= self.frames[0] <= self.frames[1]:
      raise ValueError(f"need num_hands 1 or 2, seed >= 0, 2 <= frames[0] <= frames[1]: {self}")
    if min(self.image_size) < 8 or not 0 <= self.occlusion_prob <= 1 or min(
        self.num_subjects.get(s, 1) for s in SPLITS) < 1 or not 0 < self.object_scale <= 3 or (
            not 0 <= self.scene_saturation <= 1):
      raise ValueError(f"need image_size >= (8, 8), 0 <= occlusion_prob <= 1, at least one "
                       f"subject per split, 0 < object_scale <= 3 and 0 <= scene_saturation <= 1: "
                       f"{self}")

  def videos_in(self, split: str) -> int:
    if isinstance(self.num_videos, Mapping):
      return int(self.num_videos.get(split, 0))
    return int(self.num_videos)


def from_fields(fields, **overrides) -> SyntheticConfig:
  """A SyntheticConfig from a mapping of its fields, e.g. a config's `demo_data` (an ml_collections
  ConfigDict: its nested dicts such as num_videos become plain ones), with `overrides` on top."""
  plain = {k: dict(v) if hasattr(v, "keys") else v for k, v in fields.items()}
  return SyntheticConfig(**{**plain, **overrides})


def load_vocabulary(config: SyntheticConfig) -> Dict[str, list]:
  actions = [f"{verb} {obj}" for verb in config.verbs for obj in config.objects]
  return {"actions": actions, "objects": list(config.objects)}


def intrinsics_for(image_size) -> np.ndarray:
  """Pinhole for (H, W): FPHA's horizontal field of view and square pixels (fy = fx), so the
  model's back-projection, which uses fx for both axes as the reference does, is exact at every
  aspect ratio (for 16:9 frames this is FPHA's camera)."""
  h, w = image_size
  return np.array([[0.727 * w, 0, 0.487 * w], [0, 0.727 * w, 0.506 * h], [0, 0, 1]], np.float32)


def project(joints3d: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
  uvw = np.asarray(joints3d, np.float64) @ np.asarray(intrinsics, np.float64).T
  return (uvw[..., :2] / uvw[..., 2:]).astype(np.float32)


def _smooth(s, a, b):
  x = np.clip((s - a) / (b - a), 0.0, 1.0)
  return x * x * (3 - 2 * x)


def _rot(axis: int, angle):
  """Rotation matrices about a camera axis, (..., 3, 3) for an array of angles."""
  c, s = np.cos(angle), np.sin(angle)
  i, j = [(1, 2), (2, 0), (0, 1)][axis]
  m = np.zeros(np.shape(angle) + (3, 3))
  m[..., axis, axis] = 1
  m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
  return m


def _frame(fingers, palm):
  """Rotation whose columns are the hand frame's axes in camera space (thumb, fingers, palm)."""
  y = np.asarray(fingers, float) / np.linalg.norm(fingers)
  z = np.asarray(palm, float) - y * np.dot(palm, y)
  z /= np.linalg.norm(z)
  return np.stack([np.cross(y, z), y, z], axis=1)


def _mute(colour: np.ndarray, saturation: float) -> np.ndarray:
  """`colour` (..., 3) pulled towards its own grey: saturation 1 keeps it, 0 makes it grey."""
  return saturation * colour + (1 - saturation) * colour.mean(axis=-1, keepdims=True)


def _subject(config: SyntheticConfig, subject: int) -> dict:
  """Everything a person (and their room) fixes: drawn from the seed and the subject number only."""
  rng = np.random.default_rng([config.seed, 101, subject])
  tone = rng.uniform(0, len(_SKIN) - 1)
  lo = int(tone)
  skin = _SKIN[lo] + (tone - lo) * (_SKIN[min(lo + 1, len(_SKIN) - 1)] - _SKIN[lo])
  mute = lambda colour: _mute(colour, config.scene_saturation)
  return dict(
      scale=rng.uniform(0.97, 1.03), base=_BASE * rng.uniform(0.95, 1.05, (5, 1)),
      phalanx=_PHALANX * rng.uniform(0.94, 1.06, (5, 3)),
      skin=np.clip(skin + rng.uniform(-12, 12, 3), 0, 255), sleeve=mute(rng.uniform(20, 235, 3)),
      gamma=rng.uniform(0.7, 1.4), amplitude=rng.uniform(0.75, 1.25),
      tremor=(rng.uniform(1.5, 4.0), rng.uniform(0.002, 0.006)), wiggle=rng.uniform(0.03, 0.12),
      wall=mute(rng.uniform(60, 230, 3)), table=mute(rng.uniform(50, 210, 3)),
      palette=rng.uniform(30, 230, (4, 3)), horizon=rng.uniform(0.3, 0.5),
      stripes=(rng.uniform(4, 14), rng.uniform(0, np.pi), rng.uniform(3, 12)),
      noise=rng.uniform(2, 6), clutter=int(rng.integers(2, 5)))


def _subject_of(config: SyntheticConfig, split: str, index: int) -> int:
  """Global subject number: splits take consecutive, disjoint ranges; videos rotate through."""
  counts = [int(config.num_subjects.get(s, 1)) for s in SPLITS]
  first = sum(counts[:SPLITS.index(split)])
  num_actions = len(config.verbs) * len(config.objects)
  # The + index // num_actions shift stops a subject from always getting the same actions.
  return first + (index + index // num_actions) % counts[SPLITS.index(split)]


def _hand(p: dict, grasp, wiggle) -> np.ndarray:
  """(L, 21, 3) right hand in its own frame for grasp levels (L,) and extra flexion (L, 5)."""
  joints = np.zeros(grasp.shape + (21, 3))
  for f in range(5):
    angles = np.cumsum(_FLEX[f] * grasp[:, None] + wiggle[:, f:f + 1] - 0.1 * (f > 0), axis=1)
    if f == 0:
      base, toward = np.broadcast_to(_THUMB_DIR, grasp.shape + (3,)), _THUMB_TO
    else:  # fingers close up as they flex
      splay = _SPLAY[f] * (1.2 - 0.6 * grasp)
      base = np.stack([np.sin(splay), np.cos(splay), 0 * splay], -1)
      toward = np.array([0.0, 0.0, 1.0])
    dirs = np.cos(angles)[..., None] * base[:, None] + np.sin(angles)[..., None] * toward
    chain = p["base"][f] + np.cumsum(p["phalanx"][f][:, None] * dirs, axis=1)
    joints[:, 1 + 4 * f] = p["base"][f]
    joints[:, 2 + 4 * f:5 + 4 * f] = chain
  return joints * p["scale"]


def _forearm(wrist, fingers):
  """Elbow-side end of the forearm: behind the wrist, bent down towards the image's bottom edge,
  shortened where it would come closer than 0.15 m (it must stay in front of the camera)."""
  direction = -fingers + [0.0, 0.6, 0.0]
  direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  room = (wrist[:, 2:] - 0.15) / np.maximum(-direction[:, 2:], 1e-6)
  return wrist + np.minimum(0.3, room) * direction


@dataclasses.dataclass
class _Scene:
  """One video's annotations and everything its renderer needs."""
  subject: int
  action: int
  object: int
  joints3d: np.ndarray  # (L, J, 3) float32
  joints2d: np.ndarray  # (L, J, 2) float32
  arm: np.ndarray  # (L, hands, 3) forearm end points, camera space
  center: np.ndarray  # (L, 3) object centre
  angle: np.ndarray  # (L,) object roll, radians (image plane)
  occluded: np.ndarray  # (L,) bool
  occluder: tuple  # (joint, offset (2,) m, half size m, angle, colour)
  object_color: np.ndarray
  background_seed: int


def _make_scene(config: SyntheticConfig, split: str, index: int,
                action: Optional[int] = None) -> _Scene:
  """Video `index` of `split`; `action` overrides the label (tests: same draws, other verb)."""
  num_objects = len(config.objects)
  action = index % (len(config.verbs) * num_objects) if action is None else action
  verb, obj = divmod(action, num_objects)
  motion, forward = VERBS[config.verbs[verb]]
  subject = _subject_of(config, split, index)
  p = _subject(config, subject)
  rng = np.random.default_rng([config.seed, 202, _SPLIT_CODE[split], index])
  # Every draw happens whatever the verb, so two labels of one index share all of them.
  length = int(rng.integers(config.frames[0], config.frames[1] + 1))
  amp = p["amplitude"]
  center0 = np.array([rng.uniform(-0.08, 0.06), rng.uniform(-0.01, 0.04), rng.uniform(0.44, 0.5)])
  approach = np.array([rng.uniform(0.04, 0.09), rng.uniform(0.05, 0.1), rng.uniform(-0.04, -0.02)])
  lift = np.array([rng.uniform(-0.04, 0.02), -rng.uniform(0.08, 0.12), rng.uniform(-0.03, 0.0)])
  slide = np.array([rng.uniform(-0.03, 0.03), -rng.uniform(0.0, 0.02), rng.uniform(0.08, 0.12)])
  twist = rng.uniform(1.0, 1.6)
  hand_rot = _rot(2, rng.uniform(-0.2, 0.2)) @ _rot(1, rng.uniform(-0.25, 0.25)) @ _frame(
      [-0.25, -0.75, 0.6], [0.0, 0.6, 0.75])
  reach_pitch = rng.uniform(-0.5, -0.2)
  phases = rng.uniform(0, 1, 7)
  left_pos = np.array([rng.uniform(-0.2, -0.14), rng.uniform(0.05, 0.1), rng.uniform(0.42, 0.55)])
  angle0 = rng.uniform(-0.25, 0.25)
  has_occluder = rng.random() < config.occlusion_prob
  occ_start, occ_len = rng.uniform(0, 0.7), rng.uniform(0.2, 0.45)
  occluder = (int(rng.choice([0, 5, 6, 9, 10, 13, 14, 2, 3])), rng.uniform(-0.02, 0.02, 2),
              rng.uniform(0.025, 0.045), rng.uniform(0, np.pi),
              _mute(rng.uniform(20, 235, 3), config.scene_saturation))
  object_color = np.clip(np.array(OBJECTS[config.objects[obj]][0]) + rng.uniform(-15, 15, 3), 0,
                         255)
  background_seed = int(rng.integers(2**31))

  # Phase s in [0, 1] from the integer frame number, counted backwards for the reverse verb, so
  # the reverse video's frame i is bit-for-bit the forward video's frame L - 1 - i.
  steps = np.arange(length) if forward else np.arange(length)[::-1]
  s = (steps / (length - 1)) ** p["gamma"]
  zero = np.zeros(length)
  if motion == "lift":
    reach, grasp, roll = _smooth(s, 0, 0.5), _smooth(s, 0.25, 0.55), zero
    center = center0 + amp * lift * _smooth(s, 0.45, 1.0)[:, None]
  elif motion == "twist":
    reach, grasp, center = _smooth(s, 0, 0.3), _smooth(s, 0.1, 0.35), center0 + zero[:, None]
    roll = -twist * amp * _smooth(s, 0.3, 1.0)  # negative = counter-clockwise on screen
  else:
    reach, grasp, roll = _smooth(s, 0, 0.35), 0.6 * _smooth(s, 0.15, 0.4), zero
    center = center0 + amp * slide * _smooth(s, 0.35, 1.0)[:, None]
  wave = lambda k, f=1.0: np.sin(2 * np.pi * (f * s + phases[k]))
  wiggle = p["wiggle"] * np.stack([wave(k % 7, 1.0 + 0.3 * k) for k in range(5)], -1)
  rot = _rot(2, roll) @ hand_rot @ _rot(0, reach_pitch * (1 - reach))
  radius = config.object_scale * OBJECTS[config.objects[obj]][1]
  local = _hand(p, grasp, wiggle)
  grip = p["scale"] * (_GRASP + [0, 0, radius])
  tremor = p["tremor"][1] * np.stack([wave(0, p["tremor"][0]), wave(1, p["tremor"][0]), zero], -1)
  wrist = center - rot @ grip + amp * approach * (1 - reach)[:, None] + tremor
  hands = [wrist[:, None] + np.einsum("lij,lkj->lki", rot, local)]
  # A twist turns the forearm about its own axis, so the arm follows the un-rolled hand.
  arms = [_forearm(wrist, (_rot(2, -roll) @ rot)[:, :, 1])]
  if config.num_hands == 2:  # an idle left hand, mirrored, swaying slightly
    mirror = np.diag([-1.0, 1.0, 1.0])
    left_rot = _frame([0.3, -0.7, 0.65], [0.0, 0.7, 0.7])
    left = _hand(p, 0.35 + 0.15 * wave(2), 0.5 * wiggle) @ mirror.T
    left_wrist = left_pos + 0.012 * np.stack([wave(3), wave(4), 0 * s], -1)
    hands.insert(0, left_wrist[:, None] + left @ left_rot.T)
    arms.insert(0, _forearm(left_wrist, np.broadcast_to(left_rot[:, 1], left_wrist.shape)))
  joints3d = np.concatenate(hands, axis=1).astype(np.float32)
  intrinsics = intrinsics_for(config.image_size)
  occluded = has_occluder & (s >= occ_start) & (s <= occ_start + occ_len)
  return _Scene(subject, action, obj, joints3d, project(joints3d, intrinsics), np.stack(arms, 1),
                center, angle0 + roll, occluded, occluder, object_color, background_seed)


# Object sprites: parts in metres (object frame: x right, y down), drawn in order. ('poly', points,
# colour factor) fills a polygon, ('line', points, factor, width) strokes, ('disc', centre, factor,
# radius) fills a circle. Each class has an asymmetric mark, so its rotation is visible.
_SPRITES = {
    "box": [("poly", [(-.055, -.04), (.055, -.04), (.055, .045), (-.055, .045)], 1.0),
            ("poly", [(-.055, -.04), (.055, -.04), (.045, -.055), (-.045, -.055)], 1.3),
            ("line", [(-.04, .0), (.02, .0)], 0.5, .012)],
    "ball": [("disc", (0, 0), 1.0, .048), ("line", [(-.046, .0), (.046, .0)], 1.6, .01),
             ("disc", (.02, -.022), 1.8, .009)],
    "bottle": [("poly", [(-.028, -.03), (.028, -.03), (.028, .075), (-.028, .075)], 1.0),
               ("poly", [(-.013, -.07), (.013, -.07), (.028, -.03), (-.028, -.03)], 0.9),
               ("poly", [(-.016, -.09), (.016, -.09), (.016, -.07), (-.016, -.07)], 2.5),
               ("poly", [(-.028, .01), (.028, .01), (.028, .04), (-.028, .04)], 1.7)],
    "cup": [("line", [(.04, -.025), (.068, -.02), (.068, .02), (.038, .025)], 0.8, .011),
            ("poly", [(-.047, -.045), (.047, -.045), (.035, .05), (-.035, .05)], 1.0),
            ("line", [(-.047, -.045), (.047, -.045)], 0.55, .008)],
    "can": [("poly", [(-.034, -.055), (.034, -.055), (.034, .06), (-.034, .06)], 1.0),
            ("poly", [(-.034, -.015), (.034, -.015), (.034, .02), (-.034, .02)], (1.2, .3, .3)),
            ("disc", (0, -.055), 1.25, .034)],
    "book": [("poly", [(-.07, -.05), (.07, -.05), (.07, .05), (-.07, .05)], 1.0),
             ("poly", [(-.07, -.05), (-.05, -.05), (-.05, .05), (-.07, .05)], 0.55),
             ("poly", [(.06, -.045), (.07, -.045), (.07, .045), (.06, .045)], 2.5)],
}


class _Renderer:
  """`load_image` for one video: picklable (writer workers), background built once per process."""

  def __init__(self, config: SyntheticConfig, scene: _Scene):
    self.config, self.scene = config, scene
    self._subject = self._background = None  # built on first use, in whichever process renders

  def __getstate__(self):
    return {"config": self.config, "scene": self.scene, "_subject": None, "_background": None}

  def _make_background(self) -> Image.Image:
    h, w = self.config.image_size
    p = _subject(self.config, self.scene.subject)
    rng = np.random.default_rng(self.scene.background_seed)
    # Lengths are fractions of the width, so a scene looks the same at every image size.
    yy, xx = np.mgrid[0:h, 0:w] / w
    freq, theta, strength = p["stripes"]
    horizon = (p["horizon"] + rng.uniform(-0.05, 0.05)) * h / w
    along = xx * np.cos(theta) + yy * np.sin(theta)
    wall = p["wall"] + strength * np.sin(2 * np.pi * freq * along)[..., None]
    grain = 0.6 * strength * np.sin(2 * np.pi * (freq * 3 * yy + 0.3 * np.sin(9 * xx)))[..., None]
    image = np.where((yy < horizon)[..., None], wall, p["table"] + grain)
    image += rng.normal(0, p["noise"], (h, w, 1)) + rng.normal(0, p["noise"] / 2, (h, w, 3))
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(p["clutter"]):  # blobs and boxes in the subject's palette, placed per video
      colour = p["palette"][rng.integers(4)] + rng.uniform(-20, 20, 3)
      # Muted: objects stand out.
      colour = tuple(int(c) for c in _mute(colour, 0.35 * self.config.scene_saturation))
      x, y = rng.uniform(0, w), rng.uniform(0, h)
      rx, ry = rng.uniform(0.03, 0.12) * w, rng.uniform(0.03, 0.12) * w
      shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
      shape([x - rx, y - ry, x + rx, y + ry], fill=colour)
    return pil.filter(ImageFilter.GaussianBlur(0.004 * w))

  def __call__(self, i: int) -> np.ndarray:
    scene, config = self.scene, self.config
    if not 0 <= i < len(scene.joints3d):
      raise IndexError(f"frame {i} outside a video of {len(scene.joints3d)} frames")
    if self._background is None:
      self._subject, self._background = _subject(config, scene.subject), self._make_background()
    k = intrinsics_for(config.image_size).astype(np.float64)
    image = self._background.copy()
    draw = ImageDraw.Draw(image)
    # Object: a sprite at its centre's depth, rolled by its angle.
    z = scene.center[i, 2]
    u, v = (k @ scene.center[i])[:2] / z
    px = self.config.object_scale * k[0, 0] / z
    c, s = np.cos(scene.angle[i]), np.sin(scene.angle[i])
    to_px = lambda pts: [(u + px * (c * x - s * y), v + px * (s * x + c * y)) for x, y in pts]
    for kind, geo, factor, *size in _SPRITES[config.objects[scene.object]]:
      colour = tuple(int(x) for x in np.clip(scene.object_color * factor, 0, 255))
      if kind == "poly":
        draw.polygon(to_px(geo), fill=colour)
      elif kind == "line":
        draw.line(to_px(geo), fill=colour, width=max(1, round(size[0] * px)), joint="curve")
      else:
        (x, y), = to_px([geo])
        r = size[0] * px
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    # Hands, farther first: forearm, palm, then fingers by depth; shaded darker with depth.
    hands = scene.joints3d[i].reshape(-1, 21, 3)
    uv = scene.joints2d[i].reshape(-1, 21, 2)
    p = self._subject
    for h in np.argsort([-hand[:, 2].mean() for hand in hands]):
      joints, points = hands[h], [tuple(x) for x in uv[h]]
      shade = lambda depth, f=1.0: tuple(
          int(x) for x in np.clip(p["skin"] * f * np.clip(1.2 - 0.8 * depth, 0.55, 1.0), 0, 255))
      width = lambda metres, depth: max(1, round(metres * p["scale"] * k[0, 0] / depth))
      arm = scene.arm[i, h]
      arm_uv = tuple((k @ arm)[:2] / max(arm[2], 0.05))
      draw.line([arm_uv, points[0]], fill=tuple(int(x) for x in p["sleeve"]),
                width=width(0.05, joints[0, 2]))
      palm = [points[j] for j in (0, 1, 5, 9, 13, 17)]
      draw.polygon(palm, fill=shade(joints[9, 2]), outline=shade(joints[9, 2], 0.6))
      for f in np.argsort(-joints[1:].reshape(5, 4, 3)[..., 2].mean(1)):
        chain = ([points[0]] if f == 0 else []) + points[1 + 4 * f:5 + 4 * f]
        depth = joints[1 + 4 * f:5 + 4 * f, 2].mean()
        w = width(0.019 if f == 0 else 0.016, depth)
        draw.line(chain, fill=shade(depth, 0.6), width=w + 2, joint="curve")
        draw.line(chain, fill=shade(depth), width=w, joint="curve")
        for j in range(2 + 4 * f, 5 + 4 * f):
          r = 0.5 * w + (0.5 if j % 4 == 0 else 0)
          x, y = points[j]
          draw.ellipse([x - r, y - r, x + r, y + r],
                       fill=shade(joints[j, 2], 1.15 if j % 4 == 0 else 0.85))
    if scene.occluded[i]:  # a patch riding on one joint of the acting (last) hand
      joint, offset, half, theta, colour = scene.occluder
      centre = scene.joints3d[i, -21 + joint] + np.array([offset[0], offset[1], 0])
      cu, cv = (k @ centre)[:2] / centre[2]
      r = half * k[0, 0] / centre[2]
      corners = [(cu + r * np.cos(theta + a), cv + r * np.sin(theta + a))
                 for a in np.pi * np.array([0.25, 0.75, 1.25, 1.75])]
      draw.polygon(corners, fill=tuple(int(x) for x in colour),
                   outline=tuple(int(x) for x in 255 - colour))
      draw.line([corners[0], corners[2]], fill=tuple(int(x) for x in 255 - colour),
                width=max(1, round(0.2 * r)))
    return np.array(image)


def _video(config: SyntheticConfig, split: str, index: int, scene: _Scene) -> Video:
  n = len(scene.joints3d)
  return Video(
      video_id=f"synthetic/{split}/{index:04d}", frame_idx=np.arange(n, dtype=np.int64),
      joints3d=scene.joints3d, joints2d=scene.joints2d,
      intrinsics=intrinsics_for(config.image_size),
      hand_valid=np.ones((n, config.num_hands), bool),
      object=np.full(n, scene.object, np.int32), action=int(scene.action),
      load_image=_Renderer(config, scene), image_size=tuple(config.image_size),
      subject=f"subject_{scene.subject:02d}")


def iter_videos(config: SyntheticConfig, split: str) -> Iterator[Video]:
  """The split's videos in index order; frames render when `load_image` is called."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; synthetic splits are {SPLITS}")
  for index in range(config.videos_in(split)):
    yield _video(config, split, index, _make_scene(config, split, index))

