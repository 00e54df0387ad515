"""Behaviour of the Flax HTT that does not need PyTorch: padding, geometry, encoding, init, sizes."""

import collections

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config, random_batch
from htt_jax import geometry
from htt_jax.models import build_model, init_variables, sinusoidal_encoding

FPHA_K = np.array([[348.93726, 0, 233.93314], [0, 348.93732, 135.17026], [0, 0, 1]], np.float32)


@pytest.fixture(scope="module")
def smoke(smoke_config):
  model = build_model(smoke_config)
  variables = jax.jit(lambda r: init_variables(model, r, smoke_config))(jax.random.key(1))
  forward = jax.jit(lambda v, b: model.apply(v, b["image"], b["intrinsics"], b["not_padding"],
                                             return_attention=True))
  return smoke_config, variables, forward


def _inputs(batch):
  return {k: batch[k] for k in ("image", "intrinsics", "not_padding")}


def test_padded_frames_cannot_change_valid_outputs(smoke):
  config, variables, forward = smoke
  # Clip 0: frames 10.. padding, so the second P window (16..31) is entirely padding.
  # Clip 1: frames 20.. padding, inside the second window.
  batch = _inputs(random_batch(config, valid_frames=[10, 20]))
  out = forward(variables, batch)
  changed = dict(batch)
  noise = np.random.default_rng(5).integers(0, 256, batch["image"].shape, dtype=np.uint8)
  valid = batch["not_padding"][..., None, None, None] > 0
  changed["image"] = np.where(valid, batch["image"], noise)
  changed["intrinsics"] = np.where(batch["not_padding"][..., None, None] > 0, batch["intrinsics"],
                                   batch["intrinsics"] * 1.7)
  out2 = forward(variables, changed)
  for key in ("pose_tokens", "joints3d", "object_probs", "action_inputs"):
    for b, n in enumerate([10, 20]):
      np.testing.assert_allclose(out[key][b, :n], out2[key][b, :n], rtol=1e-5, atol=1e-5,
                                 err_msg=key)
  np.testing.assert_allclose(out["action_probs"], out2["action_probs"], rtol=1e-5, atol=1e-6)
  # The padded frames did change, so the comparison above was not vacuous.
  assert np.abs(np.asarray(out["joints3d"][0, 12:]) - np.asarray(out2["joints3d"][0, 12:])).max() > 1e-3


def test_fully_padded_window_is_finite_and_masks_keys(smoke):
  config, variables, forward = smoke
  batch = _inputs(random_batch(config, valid_frames=[1, 16]))
  out = forward(variables, batch)
  for key, value in out.items():
    assert np.isfinite(np.asarray(value)).all(), key
  t = config.model.window
  attention = np.asarray(out["pose_attention"])  # (layers, windows, t, t)
  # Window 0 of clip 0 has one valid frame: every query attends only to it.
  np.testing.assert_allclose(attention[:, 0, :, 0], 1.0, rtol=1e-6)
  # Window 1 of clip 0 is all padding: its first token is forced to be a valid
  # key (reference.md §1.4).
  np.testing.assert_allclose(attention[:, 1, :, 0], 1.0, rtol=1e-6)
  # Action block: the action token (key 0) and valid frames only.
  action_attention = np.asarray(out["action_attention"])  # (layers, B, T+1, T+1)
  assert np.all(action_attention[:, 0, :, 2:] == 0)
  assert np.all(action_attention[:, 1, :, 17:] == 0)
  assert action_attention.shape == (2, 2, config.model.num_frames + 1, config.model.num_frames + 1)
  assert attention.shape == (2, 2 * config.model.num_frames // t, t, t)


def test_to_25d_matches_hand_computed_examples():
  # reference.md §1.6: the reference's outputs for FPHA intrinsics on a 480x270 input.
  raw = jnp.array([[0.0, 0.0, 0.0], [1.0, -0.5, 10.0]])
  joints2d, depth, joints3d = geometry.to_25d(raw, jnp.asarray(FPHA_K), (270, 480))
  np.testing.assert_allclose(joints2d, [[240, 135], [340, 85]], rtol=1e-6)
  np.testing.assert_allclose(depth, [0.4, 0.748937], rtol=1e-6)
  np.testing.assert_allclose(joints3d, [[0.0069547, -0.0001952, 0.4],
                                        [0.2276553, -0.1076823, 0.748937]], rtol=1e-5, atol=1e-7)
  # By hand: u = 100a + W/2, Z = fx 1e-4 s + 0.4, X = (u - cx) Z / fx, Y = (v - cy) Z / fx.
  k = np.array([[500.0, 0, 60], [0, 400.0, 30], [0, 0, 1]], np.float32)
  joints2d, depth, joints3d = geometry.to_25d(jnp.array([[0.2, 0.1, 20.0]]), jnp.asarray(k),
                                              (72, 128))
  z = 500 * 1e-4 * 20 + 0.4
  np.testing.assert_allclose(joints2d, [[84.0, 46.0]], rtol=1e-6)
  np.testing.assert_allclose(joints3d, [[(84 - 60) * z / 500, (46 - 30) * z / 500, z]], rtol=1e-6)


def test_from_25d_inverts_to_25d():
  k = np.array([[70.0, 0, 50], [0, 70.0, 35], [0, 0, 1]], np.float32)
  # By hand: a = (u - W/2) / 100, b = (v - H/2) / 100, s = (Z - 0.4) / (fx 1e-4).
  raw = geometry.from_25d(jnp.array([[68.0, 16.0]]), jnp.array([0.47]), jnp.asarray(k), (72, 96))
  np.testing.assert_allclose(raw, [[0.2, -0.2, 10.0]], rtol=1e-5)
  raw = jax.random.normal(jax.random.key(1), (4, 21, 3))
  joints2d, depth, _ = geometry.to_25d(raw, jnp.asarray(k), (72, 96))
  np.testing.assert_allclose(geometry.from_25d(joints2d, depth, jnp.asarray(k), (72, 96)), raw,
                             rtol=1e-4, atol=1e-4)


def test_projection_inverts_back_projection_when_fx_equals_fy():
  k = jnp.array([[300.0, 0, 100], [0, 300.0, 50], [0, 0, 1]])
  raw = jax.random.normal(jax.random.key(0), (5, 21, 3))
  joints2d, _, joints3d = geometry.to_25d(raw, k, (100, 200))
  np.testing.assert_allclose(geometry.project(joints3d, k), joints2d, rtol=1e-4, atol=1e-3)


def test_sinusoidal_encoding_matches_reference_values():
  pe = sinusoidal_encoding(6, 512)
  np.testing.assert_allclose(pe[1, :4], [0.8414710, 0.5403023, 0.8218562, 0.5696951], rtol=1e-6)
  np.testing.assert_allclose(pe[5, 510:512], [0.00051832, 0.99999988], rtol=1e-5)
  np.testing.assert_array_equal(pe[0, 0::2], 0.0)
  np.testing.assert_array_equal(pe[0, 1::2], 1.0)


@pytest.mark.parametrize("name, expected", [("fpha", 25_981_102), ("h2o", 26_011_858)])
def test_parameter_count_matches_reference(name, expected):
  config = load_config(name)
  model = build_model(config)
  shapes = jax.eval_shape(lambda r: init_variables(model, r, config), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected  # reference.md §1.9


def test_initialisation_follows_reference():
  config = load_config("fpha")
  model = build_model(config)
  params = jax.jit(lambda r: init_variables(model, r, config))(jax.random.key(0))["params"]
  attn = params["pose_block"]["encoder"]["layers_0"]["self_attn"]
  bound = np.sqrt(6 / (512 + 1536))  # xavier on the fused 1536x512 in-projection
  kernel = np.asarray(attn["in_proj_kernel"])
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)
  np.testing.assert_array_equal(attn["in_proj_bias"], 0)
  np.testing.assert_array_equal(attn["out_proj"]["bias"], 0)
  token = np.asarray(params["action_block"]["action_token"])
  assert abs(token.std() - 1.0) < 0.1
  mlp = np.asarray(params["pose_mlp_2"]["bias"])
  assert np.abs(mlp).max() <= 1 / np.sqrt(512) and np.abs(mlp).max() > 0.8 / np.sqrt(512)
  conv = np.asarray(params["backbone"]["layer4_0"]["conv1"]["kernel"])  # fan_out = 512 * 9
  np.testing.assert_allclose(conv.std(), np.sqrt(2 / (512 * 9)), rtol=0.02)


def _equations(jaxpr):
  """Every equation of a jaxpr, the bodies of jit, remat and custom-derivative calls included
  (a call counts itself and its body)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _equations(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _equations(sub)


def _matmul_dtypes(jaxpr):
  """(primitive, operand dtypes) -> count of the convolutions and dot products of a jaxpr."""
  return collections.Counter(
      (eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars))
      for eqn in _equations(jaxpr) if eqn.primitive.name in ("conv_general_dilated", "dot_general"))


def _primitive_counts(jaxpr):
  """primitive name -> count in a jaxpr; a call's body counts, the call itself too."""
  return collections.Counter(eqn.primitive.name for eqn in _equations(jaxpr))


def test_bfloat16_computes_in_bfloat16_with_float32_parameters(smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.dtype = "bfloat16"
  model, model32 = build_model(config), build_model(smoke_config)
  variables = jax.jit(lambda r: init_variables(model, r, config))(jax.random.key(1))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
  batch = random_batch(config, batch_size=1)
  inputs = (batch["image"], batch["intrinsics"], batch["not_padding"])

  # What XLA is asked to compute: every convolution (20 in ResNet-18) and every dense layer and
  # attention product in bfloat16. The one float32 product left is the backbone's ImageNet `fc`,
  # kept only so that checkpoints round-trip: its output feeds nothing and XLA drops it.
  counts = _matmul_dtypes(jax.make_jaxpr(model.apply)(variables, *inputs).jaxpr)
  counts32 = _matmul_dtypes(jax.make_jaxpr(model32.apply)(variables, *inputs).jaxpr)
  bf16, f32 = ("bfloat16", "bfloat16"), ("float32", "float32")
  assert set(counts32) == {("conv_general_dilated", f32), ("dot_general", f32)}, counts32
  assert counts["conv_general_dilated", bf16] == counts32["conv_general_dilated", f32] >= 20, counts
  assert ("conv_general_dilated", f32) not in counts, counts
  assert counts["dot_general", bf16] >= counts32["dot_general", f32] - 1 >= 30, counts
  assert counts["dot_general", f32] <= 1, counts

  out = jax.jit(model.apply)(variables, *inputs)
  ref = jax.jit(model32.apply)(variables, *inputs)
  for key in ("joints3d", "action_probs", "object_probs"):
    assert out[key].dtype == jnp.float32, key
  # bfloat16 keeps 8 bits of mantissa: the outputs move by a small, non-zero amount (measured on
  # the smoke model, 2026-12-05: action_probs 8e-4 on probabilities of ~0.06, joints2d 0.3 px of
  # 80). A float32 computation gives exactly 0; a broken cast (inputs or weights truncated to a
  # few bits, an overflow) far more than the upper bounds.
  action = np.abs(np.asarray(out["action_probs"]) - np.asarray(ref["action_probs"])).max()
  assert 1e-5 < action < 1e-2, action
  joints2d = np.abs(np.asarray(out["joints2d"]) - np.asarray(ref["joints2d"])).max()
  assert 1e-3 < joints2d < 0.05 * np.abs(np.asarray(ref["joints2d"])).max(), joints2d


def test_remat_gives_the_loss_and_gradients_of_no_remat(smoke_config):
  """model.remat recomputes each ResNet block in the backward pass: the program must contain the
  rematerialisation, and the loss and every gradient must be those without it."""
  from htt_jax import losses  # pylint: disable=g-import-not-at-top
  config = smoke_config.copy_and_resolve_references()
  config.model.num_frames = 16  # one window: a smaller program, the same blocks
  config.model.remat = True
  remat, plain = build_model(config), build_model(smoke_config)
  assert remat.remat and not plain.remat
  variables = jax.jit(lambda r: init_variables(plain, r, config))(jax.random.key(3))
  variables = _far_from_identity(variables)
  batch = random_batch(config, batch_size=1, seed=4)

  def loss(model):
    def fn(params):
      outputs = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                            batch["image"], batch["intrinsics"], batch["not_padding"])
      return losses.losses_from_config(outputs, batch, config)["loss/total"]
    return jax.value_and_grad(fn)

  # jax.checkpoint's primitive (named 'remat2' in this JAX, 'checkpoint' in others): once per
  # BasicBlock of ResNet-18 (4 stages x 2), none without remat.
  def remats(model):
    counts = _primitive_counts(jax.make_jaxpr(loss(model))(variables["params"]).jaxpr)
    return sum(n for name, n in counts.items() if name in ("remat2", "checkpoint", "remat"))
  assert remats(remat) == 8 and remats(plain) == 0, (remats(remat), remats(plain))
  value_r, grads_r = jax.jit(loss(remat))(variables["params"])
  value_p, grads_p = jax.jit(loss(plain))(variables["params"])
  np.testing.assert_allclose(value_r, value_p, rtol=1e-6)
  assert float(value_p) > 0
  _assert_trees_close(grads_r, grads_p, rel=1e-5)
  assert np.abs(np.asarray(grads_p["backbone"]["conv1"]["kernel"])).max() > 0


def _far_from_identity(variables, seed=0):
  """BatchNorm statistics and affine parameters far from the identity, as in a checkpoint."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return leaf * rng.uniform(0.3, 3.0, leaf.shape).astype(np.float32)
    if name.endswith(("['mean']", "['bias']")):
      return leaf + rng.normal(0, 0.2, leaf.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return leaf * rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, variables)


def _assert_trees_close(actual, desired, rel):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(desired), jax.tree.leaves(actual)):
    np.testing.assert_allclose(b, a, atol=rel * np.abs(a).max(), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("features,kernel,strides,in_features", [
    (64, 7, 2, 3),  # the stem
    (128, 3, 2, 64),  # a stage's first convolution
    (128, 1, 2, 64),  # a downsampling shortcut
])
def test_folded_conv_batch_norm_matches_plain_values_and_gradients(features, kernel, strides,
                                                                   in_features):
  """models/resnet.py folds stored-statistics BatchNorm into the convolution: same parameter tree
  and initial values, the same outputs, and the same gradients for parameters and input."""
  import functools  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from htt_jax.models import initializers, resnet  # pylint: disable=g-import-not-at-top

  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=initializers.torch_conv_kernel)
  norm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)
  pad = "VALID" if kernel == 1 else ((kernel // 2,) * 2,) * 2

  class ConvBN(nn.Module):
    folded: bool

    @nn.compact
    def __call__(self, x):
      return resnet.conv_bn(x, features, kernel, strides, pad, "conv", "bn", conv=conv, norm=norm,
                            folded=self.folded, dtype=jnp.float32, cpu_kernels=True)

  x = jax.random.normal(jax.random.key(0), (2, 20, 28, in_features))
  v_plain = ConvBN(False).init(jax.random.key(1), x)
  v_folded = ConvBN(True).init(jax.random.key(1), x)
  assert jax.tree.structure(v_plain) == jax.tree.structure(v_folded)
  for a, b in zip(jax.tree.leaves(v_plain), jax.tree.leaves(v_folded)):
    np.testing.assert_array_equal(a, b)
  variables = _far_from_identity(v_plain)
  cotangent = jax.random.normal(jax.random.key(2), (2, 10, 14, features))

  def loss(params, inputs, folded):
    y = ConvBN(folded).apply({"params": params, "batch_stats": variables["batch_stats"]}, inputs)
    return jnp.sum(y * cotangent), y

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
  (g_plain, y_plain), (g_folded, y_folded) = (grad(variables["params"], x, f) for f in (0, 1))
  np.testing.assert_allclose(y_folded, y_plain, atol=1e-5 * np.abs(y_plain).max())
  _assert_trees_close(g_folded, g_plain, rel=1e-5)


def test_folded_resnet_has_the_plain_parameters_and_features():
  """The whole backbone: the fold changes neither the parameter tree nor the features. (Whole-model
  gradients are compared per layer above: through 17 ReLUs and a max-pool, a 1e-6 change of the
  input already moves a few units across a kink, in the plain model as much as in the folded one.)"""
  from htt_jax.models.resnet import ResNet18  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  # With the CPU paths, as build_model makes it here: layer4's 2x3 maps go through the taps.
  folded, plain = ResNet18(cpu_kernels=True), ResNet18(fold_batch_norm=False, cpu_kernels=True)
  v_plain = plain.init(jax.random.key(1), x)
  v_folded = folded.init(jax.random.key(1), x)
  assert jax.tree.structure(v_plain) == jax.tree.structure(v_folded)
  for a, b in zip(jax.tree.leaves(v_plain), jax.tree.leaves(v_folded)):
    np.testing.assert_array_equal(a, b)
  variables = _far_from_identity(v_plain)
  f_plain = jax.jit(plain.apply)(variables, x)
  f_folded = jax.jit(folded.apply)(variables, x)
  np.testing.assert_allclose(f_folded, f_plain, atol=1e-5 * np.abs(f_plain).max())
