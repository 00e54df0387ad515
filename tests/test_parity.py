"""Parity with PyTorch: a reference-style .pth of the independent PyTorch module
(htt_jax/baselines/torch_htt.py, random weights) is converted by the importer, and the Flax model
run on the same inputs agrees on every intermediate and every loss term (1e-4 relative to each
array's scale; ResNet features 1e-3 absolute), for FPHA heads at 270x480 and H2O heads at a
smaller size, in float32.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import load_config, random_batch  # noqa: E402
from htt_jax import checkpointing, import_torch, losses  # noqa: E402
from htt_jax.baselines import torch_htt as torch_reference  # noqa: E402
from htt_jax.models import build_model  # noqa: E402

OUTPUT_KEYS = ("pose_tokens", "raw_pose", "joints2d", "depth", "joints3d", "object_logits",
               "object_probs", "action_inputs", "action_tokens", "action_logits", "action_probs",
               "pose_attention", "action_attention")


def _randomise(model, seed):
  """Random weights everywhere, BatchNorm statistics included, so that no layer is an identity."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point() or name.endswith("pe"):
        continue
      if name.endswith("running_var"):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
      elif tensor.dim() == 1:  # running means, BatchNorm and LayerNorm affine, biases
        tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)


def _torch_inputs(batch):
  n = lambda x: x.reshape((-1,) + x.shape[2:])
  images = batch["image"].astype(np.float32) / 255.0 - 0.5
  return dict(
      images=torch.from_numpy(n(images)).permute(0, 3, 1, 2).contiguous(),
      intrinsics=torch.from_numpy(n(batch["intrinsics"])),
      not_padding=torch.from_numpy(n(batch["not_padding"])),
      joints25d=torch.from_numpy(n(batch["joints25d"])),
      joints3d=torch.from_numpy(n(batch["joints3d"])),
      object_labels=torch.from_numpy(n(batch["object"]).astype(np.int64)),
      action_labels=torch.from_numpy(batch["action"].astype(np.int64)))


def _check(name, ours, theirs, rtol=1e-4):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  scale = max(np.abs(theirs).max(), 1e-6)
  np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("dataset, image_size, valid_frames, module_prefix", [
    ("fpha", (270, 480), [20], False),
    ("h2o", (96, 160), [32, 7], True),  # clip 1: its second window is all padding
])
def test_flax_matches_pytorch_reference(tmp_path, dataset, image_size, valid_frames, module_prefix):
  torch.manual_seed(0)
  torch.set_num_threads(2)
  config = load_config(dataset)
  config.model.num_frames = 32
  config.dataset.image_size = image_size
  heads = dict(num_joints=config.model.num_joints, num_objects=config.model.num_objects,
               num_actions=config.model.num_actions)
  reference = torch_reference.TemporalNetRef(**heads, window=16, num_frames=32)
  _randomise(reference, seed=1)
  reference.eval()
  pth = tmp_path / "checkpoint_45.pth"
  torch_reference.save_reference_checkpoint(reference, str(pth), module_prefix=module_prefix)

  import_torch.convert_reference_checkpoint(str(pth), config, str(tmp_path / "converted"))
  variables, metadata = checkpointing.restore_variables(str(tmp_path / "converted"))

  batch = random_batch(config, batch_size=len(valid_frames), seed=2, valid_frames=valid_frames)
  with torch.no_grad():
    theirs = {k: v.numpy() for k, v in reference(**_torch_inputs(batch)).items()}
  # Ours per clip (B, T, ...); theirs per frame (B*T, ...).
  b, t = len(valid_frames), config.model.num_frames
  ours = jax.jit(lambda v, x: build_model(config).apply(
      v, x["image"], x["intrinsics"], x["not_padding"], return_attention=True))(variables, batch)
  ours = jax.device_get(ours)

  np.testing.assert_allclose(ours["features"].reshape(b * t, -1), theirs["features"], atol=1e-3)
  for key in OUTPUT_KEYS:
    value = ours[key]
    if key not in ("action_inputs", "action_tokens", "action_logits", "action_probs",
                   "pose_attention", "action_attention"):
      value = value.reshape((b * t,) + value.shape[2:])
    _check(key, value, theirs[key])

  for normalization in ("frame", "clip"):
    with torch.no_grad():
      theirs_loss = torch_reference.reference_losses(
          {k: torch.from_numpy(np.asarray(v)) for k, v in theirs.items()},
          **{k: v for k, v in _torch_inputs(batch).items() if k not in ("images", "intrinsics")},
          normalization=normalization)
    ours_loss = losses.compute_losses(ours, batch, normalization=normalization)
    for key in losses.LOSS_TERMS + ("total",):
      _check(f"{normalization} loss/{key}", ours_loss[f"loss/{key}"],
             theirs_loss[f"loss/{key}"].numpy())
  assert metadata["epoch"] == 45
