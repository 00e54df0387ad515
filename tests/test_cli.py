"""Scripts report a user's mistake as one `error: ...` line and exit 1; bugs keep their traceback.

Each script run here fails before anything is compiled (most before JAX starts), so these stay
cheap.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from conftest import ROOT
from htt_jax import cli, config_lib


def _script(name, *args, timeout=300):
  run = subprocess.run([sys.executable, f"scripts/{name}.py", *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=timeout)
  return run


def _assert_one_error_line(run, *names):
  """Exit status 1, exactly one `error:` line naming every one of `names`, no traceback."""
  assert run.returncode == 1, (run.returncode, run.stderr[-3000:])
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, run.stderr[-3000:]
  for name in names:
    assert name in errors[0], errors[0]
  return errors[0]


@pytest.mark.parametrize("override, names", [
    ("--config.batch_size=-1", ["config.batch_size=-1", "positive"]),
    ("--config.model.window=5", ["config.model.window", "t=5", "T=32"]),
    ("--config.dataset.data_dir=", ["config.dataset.data_dir", "prepare_data.py"]),
])
def test_train_reports_config_mistakes_in_one_line(tmp_path, override, names):
  run = _script("train", "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}", override)
  _assert_one_error_line(run, *names)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_reports_a_data_dir_without_a_manifest(tmp_path):
  run = _script("train", "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
                f"--config.dataset.data_dir={tmp_path / 'empty'}")
  _assert_one_error_line(run, "train.manifest.json", "config.dataset.data_dir")


def test_a_damaged_manifest_is_one_line_naming_it(tmp_path):
  from data_pipeline import schema  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  data.mkdir()
  manifest = data / "train.manifest.json"
  for text, message in (("", "is damaged"), ("[1, 2]", "holds a JSON list, expected an object"),
                        ('{"format_version": 2}', "format_version 2 but this code reads version 1")):
    manifest.write_text(text)
    with pytest.raises(schema.DataError, match=message):
      schema.load_manifest(str(data), "train")
  manifest.write_text('{"format_version": 1, "shards": [')  # torn
  run = _script("train", "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
                f"--config.dataset.data_dir={data}")
  _assert_one_error_line(run, str(manifest), "is damaged", "prepare the split again")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_evaluate_reports_a_missing_checkpoint(tmp_path):
  run = _script("evaluate", "--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
                f"--config.dataset.data_dir={tmp_path}")
  _assert_one_error_line(run, str(tmp_path / "run" / "checkpoints"))


def test_predict_reports_a_missing_or_wrong_clips_file(tmp_path):
  common = ["--config=configs/smoke.py", f"--checkpoint_dir={tmp_path}",
            f"--output={tmp_path / 'out.npz'}"]
  missing = tmp_path / "missing.npz"
  _assert_one_error_line(_script("predict", *common, f"--clips={missing}"), str(missing),
                         "no such file")
  wrong = tmp_path / "wrong.npz"
  np.savez(wrong, images=np.zeros((32, 72, 128, 3), np.uint8))
  _assert_one_error_line(_script("predict", *common, f"--clips={wrong}"), str(wrong),
                         "'intrinsics'")
  assert not (tmp_path / "out.npz").exists()


def test_predict_reports_clips_files_numpy_cannot_read_as_an_npz(tmp_path):
  common = ["--config=configs/smoke.py", f"--checkpoint_dir={tmp_path}",
            f"--output={tmp_path / 'out.npz'}"]
  empty = tmp_path / "empty.npz"
  empty.write_bytes(b"")
  _assert_one_error_line(_script("predict", *common, f"--clips={empty}"), str(empty))
  single = tmp_path / "clips.npy"
  np.save(single, np.zeros((32, 72, 128, 3), np.uint8))
  _assert_one_error_line(_script("predict", *common, f"--clips={single}"), str(single),
                         "(32, 72, 128, 3)", "np.savez")
  text = tmp_path / "text.npz"
  np.savez(text, images=np.zeros((32, 72, 128, 3), np.uint8), intrinsics=np.full((32, 3, 3), "a"),
           not_padding=np.ones(32, np.float32))
  _assert_one_error_line(_script("predict", *common, f"--clips={text}"), str(text),
                         "'intrinsics' has dtype <U1")
  assert not (tmp_path / "out.npz").exists()


def test_a_damaged_checkpoint_is_one_line_naming_its_step(tmp_path):
  """A truncated array file of a finished step: the step and the folder, not pages of Orbax's and
  asyncio's tracebacks (a manager left open prints them at exit)."""
  from htt_jax import checkpointing  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  checkpointing.save_variables(str(directory), {"params": {"w": np.ones((64, 64), np.float32)}},
                               step=3)
  for root, _, files in os.walk(directory / "3" / "variables"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(min(10, f.seek(0, 2)))
  with pytest.raises(config_lib.ConfigError,
                     match=f"checkpoint step 3 in {directory} cannot be restored"):
    checkpointing.restore_variables(str(directory))
  with pytest.raises(FileNotFoundError, match=r"no finished checkpoint step 7 .* \[3\]"):
    checkpointing.restore_variables(str(directory), step=7)
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
    checkpointing.restore_variables(str(a_file))

  clips = tmp_path / "clips.npz"
  np.savez(clips, images=np.zeros((32, 72, 128, 3), np.uint8),
           intrinsics=np.tile(np.eye(3, dtype=np.float32), (32, 1, 1)),
           not_padding=np.ones(32, np.float32))
  run = _script("predict", "--config=configs/smoke.py", f"--checkpoint_dir={directory}",
                f"--clips={clips}", f"--output={tmp_path / 'out.npz'}")
  _assert_one_error_line(run, "checkpoint step 3", str(directory))
  assert "Event loop is closed" not in run.stderr, run.stderr[-3000:]
  assert not (tmp_path / "out.npz").exists()


def test_other_scripts_report_mistakes_in_one_line(tmp_path):
  _assert_one_error_line(
      _script("prepare_data", "--dataset=fpha", f"--raw_dir={tmp_path / 'nope'}",
              f"--output_dir={tmp_path / 'out'}"), "--raw_dir")
  _assert_one_error_line(
      _script("benchmark", "--config=configs/benchmark.py", f"--output={tmp_path / 'b.json'}",
              "--config.sweep=no_such_key=1"), "config.sweep", "no_such_key")
  _assert_one_error_line(
      _script("demo", f"--workdir={tmp_path / 'demo'}", "--config.batch_size=0"),
      "config.batch_size=0")
  _assert_one_error_line(
      _script("convert_torch_checkpoint", "--config=configs/smoke.py",
              f"--torch_checkpoint={tmp_path / 'none.pth'}", f"--output_dir={tmp_path / 'ck'}"),
      "none.pth")


@pytest.mark.parametrize("args, names", [
    (["--config=configs/smoke.py", "--config.no_such_key=1"],
     ["names a key the config does not have", "'no_such_key'"]),
    (["--config=configs/smoke.py", "--config.model.num_frame=8"],
     ["'num_frame'", 'Did you mean "num_frames"']),
    (["--config=configs/nope.py"], ["configs/nope.py", "No such file"]),
    (["--config=configs/synthetic.py:runlokal"],
     ["--config=configs/synthetic.py:runlokal", "unknown argument 'runlokal'", "runlocal"]),
    (["--config=configs/fpha_tpu_pod.py:host=8"], ["unknown option 'host'", "hosts"]),
    (["--config=configs/smoke.py", "--config.batch_size=abc"],
     ["--config.batch_size=abc", "invalid literal for int()"]),
    (["--config=configs/smoke.py", "--no_such_flag=1"], ["no_such_flag"]),
])
def test_command_lines_that_do_not_parse_are_one_line(tmp_path, args, names):
  """absl prints two lines for some of these and ml_collections a traceback for the rest (a config
  file's failure surfaces at the config's first use); cli.parse_flags makes each one line."""
  run = _script("evaluate", f"--workdir={tmp_path / 'run'}", *args, timeout=120)
  _assert_one_error_line(run, *names)
  assert not (tmp_path / "run").exists()


# The mechanism itself, in this process.

def _exit_of(main, user_errors=()):
  with pytest.raises(SystemExit) as exit_info:
    cli.guard(main, user_errors)([])
  return exit_info.value.code


def _raiser(error):
  def main(argv):
    del argv
    raise error
  return main


@pytest.mark.parametrize("error", [
    config_lib.ConfigError("config.k=1 is wrong"), FileNotFoundError("no /x"),
    FileExistsError("/x exists"), PermissionError("/x: denied"), app.UsageError("--x is wrong"),
])
def test_users_mistakes_become_one_line(error):
  code = _exit_of(_raiser(error))
  assert code == f"error: {error}"  # SystemExit(str): printed to stderr, exit status 1


def test_bugs_keep_their_traceback():
  for bug in (ValueError("shapes do not match"), KeyError("k"), TypeError("t"), OSError("io")):
    with pytest.raises(type(bug)):
      cli.guard(_raiser(bug))([])


def test_a_script_may_name_more_user_errors():
  assert _exit_of(_raiser(ValueError("bad .pth")), user_errors=(ValueError,)) == \
      "error: bad .pth"


def test_success_passes_through():
  assert cli.guard(lambda argv: 7)([]) == 7


def test_no_jax_or_tensorflow_import():
  code = ("import sys; from htt_jax import cli; "
          "print(sorted(m for m in ('jax', 'tensorflow', 'torch') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=ROOT)
  assert out.stdout.strip() == "[]"
