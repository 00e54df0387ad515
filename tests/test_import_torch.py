"""PyTorch checkpoint import (htt_jax/import_torch.py, scripts/convert_torch_checkpoint.py).

Expected key lists are written out here from docs/reference.md §5.2 and torchvision's naming,
not taken from the code under test. Variables are random arrays of the model's shapes
(`jax.eval_shape` of the real initialisation), which is all a layout mapping needs.
"""

import collections
import os
import pickle
import subprocess
import sys
import uuid

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, load_config  # noqa: E402
from htt_jax import checkpointing, import_torch, steps  # noqa: E402
from htt_jax.models import build_model, init_variables, sinusoidal_encoding  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
BASE = "meshregnet.base_net."


def random_variables(config, seed=0):
  shapes = jax.eval_shape(lambda r: init_variables(build_model(config), r, config),
                          jax.random.key(0))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def resnet_entries():
  """torchvision ResNet-18 keys and shapes, in module order (reference.md §1.1, §5.2)."""
  entries = []

  def conv_bn(conv, bn, shape):
    entries.append((f"{conv}.weight", shape))
    entries.extend((f"{bn}.{s}", (shape[0],)) for s in ("weight", "bias", "running_mean",
                                                         "running_var"))
    entries.append((f"{bn}.num_batches_tracked", ()))

  conv_bn("conv1", "bn1", (64, 3, 7, 7))
  inplanes = 64
  for stage, planes in enumerate((64, 128, 256, 512), start=1):
    for block in (0, 1):
      pre = f"layer{stage}.{block}."
      conv_bn(pre + "conv1", pre + "bn1", (planes, inplanes if block == 0 else planes, 3, 3))
      conv_bn(pre + "conv2", pre + "bn2", (planes, planes, 3, 3))
      if stage > 1 and block == 0:
        conv_bn(pre + "downsample.0", pre + "downsample.1", (planes, inplanes, 1, 1))
    inplanes = planes
  return entries + [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]


def reference_entries(joints, objects, actions):
  """reference.md §5.2: the 194 (key, shape) pairs of a reference state_dict, in order."""
  entries = [("action_token", (1, 1, 512))]
  entries += [(BASE + k, s) for k, s in resnet_entries()]
  entries.append(("transformer_pe.pe", (1, 5000, 512)))

  def linear(name, fan_in, fan_out):
    return [(f"{name}.weight", (fan_out, fan_in)), (f"{name}.bias", (fan_out,))]

  def encoder(prefix):
    out = []
    for i in (0, 1):
      layer = f"{prefix}.encoder.layers.{i}."
      out += [(layer + "self_attn.in_proj_weight", (1536, 512)),
              (layer + "self_attn.in_proj_bias", (1536,))]
      out += linear(layer + "self_attn.out_proj", 512, 512)
      out += linear(layer + "linear1", 512, 2048) + linear(layer + "linear2", 2048, 512)
      out += [(layer + f"norm{n}.{p}", (512,)) for n in (1, 2) for p in ("weight", "bias")]
    return out + [(f"{prefix}.encoder.norm.{p}", (512,)) for p in ("weight", "bias")]

  entries += encoder("transformer_pose")
  entries += linear("image_to_hand_pose.mlp.0", 512, 512)
  entries += linear("image_to_hand_pose.mlp.2", 512, 512)
  entries += linear("image_to_hand_pose.mlp.4", 512, 3 * joints)
  entries += linear("image_to_olabel_embed", 512, 512)
  entries += linear("obj_classification.classifier", 512, objects)
  entries += linear("hand_pose3d_to_action_input", 2 * joints, 512)
  entries += linear("olabel_to_action_input", objects, 512)
  entries += linear("concat_to_action_input", 1536, 512)
  entries += encoder("transformer_action")
  return entries + linear("action_classification.classifier", 512, actions)


def assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def smoke():
  config = load_config("smoke")
  variables = random_variables(config)
  return config, variables, import_torch.flax_to_reference(variables)


def save_reference_file(path, state_dict, prefix="", nested=True, epoch=7):
  """A file laid out like the authors' checkpoints (reference.md §5.1), optimizer and
  scheduler included."""
  tensors = collections.OrderedDict((prefix + k, torch.from_numpy(np.asarray(v)))
                                    for k, v in state_dict.items())
  params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(3))]
  optimizer = torch.optim.Adam(params, lr=3e-5)
  scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=15.0, gamma=0.5)
  params[0].sum().backward()
  optimizer.step()  # So the optimizer state (a defaultdict) is not empty.
  scheduler.step()
  obj = tensors
  if nested:
    obj = {"epoch": epoch, "network": "HTT", "state_dict": tensors,
           "optimizer": optimizer.state_dict(), "scheduler": scheduler}
  torch.save(obj, path)
  return path


@pytest.mark.parametrize("name,heads", [("fpha", (21, 26, 45)), ("h2o", (42, 8, 36))])
def test_reference_keys_order_shapes_and_round_trip(name, heads):
  config = load_config(name)
  variables = random_variables(config)
  reference = import_torch.flax_to_reference(variables)
  expected = reference_entries(*heads)
  assert len(expected) == 194
  assert [(k, tuple(v.shape)) for k, v in reference.items()] == expected
  for key, value in reference.items():
    assert value.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32), key
  # reference.md §1.9: total parameter count of the reference model with these heads.
  count = sum(x.size for x in jax.tree_util.tree_leaves(variables["params"]))
  assert count == {"fpha": 25_981_102, "h2o": 26_011_858}[name]
  assert_trees_equal(import_torch.reference_to_flax(reference, config), variables)


def test_smoke_round_trip_and_layouts(smoke):
  config, variables, reference = smoke
  assert_trees_equal(import_torch.reference_to_flax(reference, config), variables)
  params, stats = variables["params"], variables["batch_stats"]
  # Linear (out, in) <-> kernel (in, out); conv (out, in, kh, kw) <-> (kh, kw, in, out).
  np.testing.assert_array_equal(reference["image_to_hand_pose.mlp.4.weight"],
                                params["pose_mlp_2"]["kernel"].T)
  np.testing.assert_array_equal(reference[BASE + "layer2.0.downsample.0.weight"],
                                params["backbone"]["layer2_0"]["downsample_conv"]["kernel"]
                                .transpose(3, 2, 0, 1))
  np.testing.assert_array_equal(reference[BASE + "layer3.1.bn2.running_var"],
                                stats["backbone"]["layer3_1"]["bn2"]["var"])
  np.testing.assert_array_equal(reference[BASE + "bn1.weight"], params["backbone"]["bn1"]["scale"])
  # Rows [0:d] of in_proj_weight are W_q (reference.md §1.3): the first d columns of our
  # fused kernel.
  attn = params["action_block"]["encoder"]["layers_1"]["self_attn"]
  d = attn["in_proj_kernel"].shape[0]
  in_proj_weight = reference["transformer_action.encoder.layers.1.self_attn.in_proj_weight"]
  for i in range(3):
    np.testing.assert_array_equal(in_proj_weight[i * d:(i + 1) * d],
                                  attn["in_proj_kernel"][:, i * d:(i + 1) * d].T)
  np.testing.assert_allclose(reference["transformer_pe.pe"][0, 1, :4],
                             [0.8414710, 0.5403023, 0.8218562, 0.5696951], rtol=1e-6)


@pytest.mark.parametrize("nested,prefix", [(True, ""), (True, "module."), (False, ""),
                                           (False, "module.")])
def test_reference_file_with_optimizer_and_scheduler(smoke, tmp_path, nested, prefix):
  config, variables, reference = smoke
  path = save_reference_file(str(tmp_path / "checkpoint.pth"), reference, prefix, nested)
  if nested:  # Plain weights-only loading refuses the pickled scheduler object.
    with pytest.raises(pickle.UnpicklingError, match="StepLR"):
      torch.load(path, map_location="cpu", weights_only=True)
  obj = import_torch.load_torch_file(path)
  if nested:
    assert obj["epoch"] == 7 and obj["network"] == "HTT"
    scheduler = obj["scheduler"]
    assert isinstance(scheduler, import_torch.PickledStepLR)
    assert scheduler.state["step_size"] == 15.0 and scheduler.state["gamma"] == 0.5
    assert isinstance(scheduler.state["optimizer"], import_torch.PickledAdam)
  state_dict = import_torch.extract_state_dict(obj)
  assert list(state_dict) == list(reference)
  assert_trees_equal(import_torch.reference_to_flax(state_dict, config, source=path), variables)


def test_module_prefix_rule_follows_the_reference():
  arrays = {"module.a.weight": np.ones(2, np.float32), "module.b": np.zeros(1, np.float32)}
  assert list(import_torch.extract_state_dict(arrays)) == ["a.weight", "b"]
  # Only the FIRST key decides (reference.md §5.1).
  arrays = {"a.weight": np.ones(2, np.float32), "module.b": np.zeros(1, np.float32)}
  assert list(import_torch.extract_state_dict(arrays)) == ["a.weight", "module.b"]
  with pytest.raises(import_torch.TorchCheckpointError, match="no state_dict"):
    import_torch.extract_state_dict({"epoch": 3, "network": "HTT"}, source="x.pth")


class _Exploit:
  def __init__(self, function, argument):
    self.function, self.argument = function, argument

  def __reduce__(self):
    return self.function, (self.argument,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # The plain pickle's protocol 4.
@pytest.mark.parametrize("how", ["torch_save", "plain_pickle", "eval"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, how):
  marker = f"/tmp/PWNED_{uuid.uuid4().hex}"
  path = str(tmp_path / "evil.pth")
  if how == "eval":
    exploit = _Exploit(eval, f"__import__('os').system('touch {marker}')")
  else:
    exploit = _Exploit(os.system, f"touch {marker}")
  payload = {"state_dict": {"a": torch.zeros(2)}, "scheduler": exploit}
  if how == "plain_pickle":
    with open(path, "wb") as f:
      f.write(pickle.dumps(payload))
  else:
    torch.save(payload, path)
  try:
    with pytest.raises(import_torch.UnsafeCheckpointError, match="evil.pth"):
      import_torch.load_torch_file(path)
    assert not os.path.exists(marker)
  finally:
    if os.path.exists(marker):
      os.remove(marker)


def test_unreadable_files_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    import_torch.load_torch_file(str(tmp_path / "missing.pth"))
  text = tmp_path / "notes.pth"
  text.write_text("hello, not a checkpoint\n")
  with pytest.raises(import_torch.TorchCheckpointError, match="notes.pth"):
    import_torch.load_torch_file(str(text))
  whole = save_reference_file(str(tmp_path / "whole.pth"), {"a": np.ones(3, np.float32)})
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(open(whole, "rb").read()[:300])
  with pytest.raises(import_torch.TorchCheckpointError, match="truncated.pth"):
    import_torch.load_torch_file(str(truncated))


def test_mismatch_lists_missing_unexpected_and_misshaped(smoke):
  config, _, reference = smoke
  broken = dict(reference)
  del broken["action_token"]
  broken["extra.weight"] = np.zeros(3, np.float32)
  broken["obj_classification.classifier.weight"] = np.zeros((5, 64), np.float32)
  with pytest.raises(import_torch.CheckpointMismatchError) as error:
    import_torch.reference_to_flax(broken, config, source="some.pth")
  message = str(error.value)
  assert "some.pth" in message and "action_token" in message and "extra.weight" in message
  assert "obj_classification.classifier.weight" in message and "(4, 64)" in message
  assert "(5, 64)" in message
  assert error.value.missing == ["action_token"] and error.value.unexpected == ["extra.weight"]
  assert [m[0] for m in error.value.mismatched] == ["obj_classification.classifier.weight"]


def test_a_different_positional_encoding_is_a_different_model(smoke):
  config, _, reference = smoke
  changed = dict(reference)
  changed["transformer_pe.pe"] = reference["transformer_pe.pe"].copy()
  changed["transformer_pe.pe"][0, 3] += 0.01
  with pytest.raises(import_torch.CheckpointMismatchError, match="transformer_pe.pe"):
    import_torch.reference_to_flax(changed, config)
  np.testing.assert_allclose(reference["transformer_pe.pe"][0, :40],
                             sinusoidal_encoding(40, 512), atol=1e-6)


def test_resnet_initialises_only_the_backbone(smoke, tmp_path):
  _, variables, _ = smoke
  rng = np.random.default_rng(3)
  state_dict = collections.OrderedDict()
  for key, shape in resnet_entries():
    if key.endswith("num_batches_tracked"):
      state_dict[key] = torch.tensor(0)
    else:
      state_dict[key] = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
  path = str(tmp_path / "resnet18.pth")
  torch.save(state_dict, path)
  before = jax.tree_util.tree_map(np.copy, variables)
  new = import_torch.init_backbone_from_resnet(variables, path)
  assert_trees_equal(variables, before)  # The input tree is left alone.
  backbone = new["params"]["backbone"]
  np.testing.assert_array_equal(backbone["conv1"]["kernel"],
                                state_dict["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(backbone["fc"]["kernel"], state_dict["fc.weight"].numpy().T)
  np.testing.assert_array_equal(new["batch_stats"]["backbone"]["layer4_0"]["downsample_bn"]["mean"],
                                state_dict["layer4.0.downsample.1.running_mean"].numpy())
  for collection in ("params", "batch_stats"):
    rest = lambda tree: {k: v for k, v in tree[collection].items() if k != "backbone"}
    assert_trees_equal(rest(new), rest(variables))
  # Same result with the reference's prefix; a missing key is an error naming it.
  prefixed = collections.OrderedDict((BASE + k, v) for k, v in state_dict.items())
  assert_trees_equal(import_torch.resnet_to_flax(prefixed),
                     {c: new[c]["backbone"] for c in ("params", "batch_stats")})
  # Training starts from it when the config names the file (the caller loads it, as train.py does).
  config = load_config("smoke")
  config.init.resnet_checkpoint = path
  with pytest.raises(ValueError, match="init_backbone_from_resnet"):
    steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)  # never silently random
  variables = import_torch.init_backbone_from_resnet(
      steps.random_variables(config, jax.random.key(0)), config.init.resnet_checkpoint)
  state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1,
                                   variables=variables)
  np.testing.assert_array_equal(state.params["backbone"]["layer2_1"]["conv2"]["kernel"],
                                new["params"]["backbone"]["layer2_1"]["conv2"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["backbone"]["bn1"]["var"],
                                state_dict["bn1.running_var"].numpy())
  # train.py reads the file before building the model (load_resnet), then passes the result.
  assert_trees_equal(import_torch.init_backbone_from_resnet(variables, import_torch.load_resnet(path)),
                     import_torch.init_backbone_from_resnet(variables, path))
  del state_dict["layer3.1.bn1.running_var"]
  torch.save(state_dict, path)
  with pytest.raises(import_torch.CheckpointMismatchError, match="layer3.1.bn1.running_var"):
    import_torch.init_backbone_from_resnet(variables, path)


def test_train_names_the_key_of_a_file_that_is_no_resnet(tmp_path):
  """config.init.resnet_checkpoint: a file torch cannot read, a pickle outside the allowlist and
  the HTT weights instead of a ResNet's are each a ConfigError naming the key (one `error:` line
  from train.py), raised by what train.py calls before it builds the model."""
  from htt_jax import config_lib, train  # pylint: disable=g-import-not-at-top
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  unsafe = tmp_path / "unsafe.pth"
  unsafe.write_bytes(pickle.dumps(uuid.UUID(int=1), protocol=2))  # a global outside the allowlist
  htt = tmp_path / "htt.pth"
  torch.save({"model_state_dict": {"transformer_pe.pe": torch.zeros(1, 8)}}, str(htt))
  for path, detail in ((empty, "not a readable PyTorch checkpoint"),
                       (unsafe, "GLOBAL uuid.UUID"), (htt, "")):
    with pytest.raises(config_lib.ConfigError) as error:
      train._imagenet_backbone(str(path))  # pylint: disable=protected-access
    message = str(error.value)
    assert message.startswith(f"config.init.resnet_checkpoint={str(path)!r} is not a torchvision "
                              "ResNet-18 state_dict"), message
    assert detail in message and len(message) < 800, message


def _run_script(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "scripts/convert_torch_checkpoint.py", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_converter_script_end_to_end(smoke, tmp_path):
  _, variables, reference = smoke
  path = save_reference_file(str(tmp_path / "checkpoint_7.pth"), reference)
  output = str(tmp_path / "converted")
  result = _run_script(f"--torch_checkpoint={path}", "--config=configs/smoke.py",
                       f"--output_dir={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  restored, metadata = checkpointing.restore_variables(output)
  assert_trees_equal(restored, variables)
  assert metadata["epoch"] == 7 and metadata["format"] == "reference-pth"
  assert metadata["step"] == 7  # the Orbax step restored: evaluation's checkpoint_step
  assert metadata["source"] == os.path.abspath(path)
  assert metadata["config"]["model"]["num_joints"] == 21
  assert sorted(os.listdir(output)) == ["7"]

  failed = _run_script(f"--torch_checkpoint={path}", "--config=configs/smoke.py",
                       f"--output_dir={tmp_path / 'other'}", "--config.model.num_joints=42")
  assert failed.returncode != 0
  assert "image_to_hand_pose.mlp.4.weight" in failed.stderr and "pose_mlp_2" in failed.stderr
  assert not os.path.exists(tmp_path / "other")  # Nothing written before the check.


def test_module_imports_without_torch():
  code = ("import sys; sys.modules['torch'] = None\n"
          "import htt_jax.import_torch as m\n"
          "try:\n  m.load_torch_file('x.pth')\nexcept ImportError as e:\n  print(e)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "htt-jax[torch]" in result.stdout
