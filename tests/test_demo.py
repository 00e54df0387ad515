"""`make demo` end to end at a toy size (scripts/demo.py: data, training, evaluation on the test
subjects, the table, the held-out video, the time taken and on what), and its timing line."""

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, load_config
from htt_jax import config_lib, demo
from htt_jax import machine

# 2 steps of a narrow model on 8 short videos: the demo's path, not its accuracy.
TINY = ["--config.num_train_steps=2", "--config.log_every_steps=1", "--config.model.num_frames=8",
        "--config.model.window=4", "--config.model.hidden_dim=64", "--config.model.mlp_dim=128",
        "--config.demo_data.num_videos.train=4", "--config.demo_data.num_videos.val=2",
        "--config.demo_data.num_videos.test=2", "--config.demo_data.num_subjects.train=2",
        "--config.demo_data.num_subjects.val=1", "--config.demo_data.num_subjects.test=1"]


def test_the_demo_script_end_to_end(tmp_path):
  workdir = tmp_path / "demo"
  run = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), f"--workdir={workdir}"]
                       + TINY, capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-4000:]
  out = run.stdout
  assert "held-out synthetic subjects (2 videos):" in out
  with open(workdir / "eval" / "test" / "metrics.json") as f:
    report = json.load(f)
  assert report["num_videos"] == 2 and report["checkpoint_step"] == 2
  assert 0.0 <= report["action_accuracy"] <= 1.0 and math.isfinite(report["mepe_mm"])
  # The table shows metrics.json's values.
  assert re.search(rf"action accuracy \(videos, soft vote\)\s+{report['action_accuracy']:.3f}", out)
  assert re.search(rf"hand MEPE \(mm\)\s+{report['mepe_mm']:.1f}\s", out)
  for name in ("input.mp4", "overlay.mp4", "predictions.json", "predictions.npz"):
    assert (workdir / "video" / name).exists(), name
  # Last: the time taken, each phase, and the machine (as docs/demo.md reports the demo's time).
  last = out.strip().splitlines()[-1]
  match = re.fullmatch(r"demo: (?:(\d+) min )?(\d+) s in all \(start-up (\d+) s, data (\d+) s, "
                       r"training and evaluation (?:(\d+) min )?(\d+) s, held-out video (\d+) s\) "
                       r"on (.+); the target is 10 minutes on 2 CPUs \(docs/demo.md\)", last)
  assert match, last
  total = 60 * int(match[1] or 0) + int(match[2])
  phases = [int(match[3]), int(match[4]), 60 * int(match[5] or 0) + int(match[6]), int(match[7])]
  assert total - 2 <= sum(phases) <= total + 2 and phases[2] > 0  # each rounded to the second
  assert match[8] == machine.cpu_summary()


def test_timing_line_formats_minutes_and_names_the_machine():
  started = time.perf_counter() - 605.2
  line = demo.timing_line(started, [("data", 4.4), ("training and evaluation", 590.6),
                                    ("held-out video", 59.6)], "AMD EPYC, AVX2, 2 CPUs")
  assert line == ("demo: 10 min 5 s in all (data 4 s, training and evaluation 9 min 51 s, "
                  "held-out video 1 min 0 s) on AMD EPYC, AVX2, 2 CPUs; the target is 10 minutes "
                  "on 2 CPUs (docs/demo.md)")


def _tiny_data_config(data_dir):
  config = load_config("synthetic")
  config.dataset.data_dir = str(data_dir)
  config.model.num_frames, config.model.window = 8, 4
  config.demo_data.num_videos = dict(train=2, val=1, test=1)
  config.demo_data.num_subjects = dict(train=1, val=1, test=1)
  return config


def _files(folder):
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_data_of_other_settings_is_refused_not_reused(tmp_path):
  """The demo reuses the data it finds in its workdir only if it was rendered with the same
  config.demo_data; otherwise one error naming each differing field, and no file changes."""
  data_dir = tmp_path / "data"
  config = _tiny_data_config(data_dir)
  demo.prepare_data(config)
  before = _files(data_dir)
  assert demo.DATA_RECORD in before and "test.manifest.json" in before
  assert json.loads(before[demo.DATA_RECORD])["frames"] == list(config.demo_data.frames)
  demo.prepare_data(config)  # the same settings: reused as it is
  assert _files(data_dir) == before

  config.demo_data.frames = (24, 48)
  config.demo_data.seed = 7
  with pytest.raises(config_lib.ConfigError) as error:
    demo.prepare_data(config)
  message = str(error.value)
  assert str(data_dir) in message and "remove" in message
  assert "config.demo_data.frames=[24, 48] now, [24, 32] there" in message
  assert "config.demo_data.seed=7 now, 0 there" in message
  assert _files(data_dir) == before

  # Data from before the record existed: its settings are unknown, so it is refused too.
  (data_dir / demo.DATA_RECORD).unlink()
  before = _files(data_dir)
  with pytest.raises(config_lib.ConfigError, match=f"no {demo.DATA_RECORD}"):
    demo.prepare_data(_tiny_data_config(data_dir))
  assert _files(data_dir) == before
