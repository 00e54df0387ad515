"""Checks the PyTorch reference (htt_jax/baselines/torch_htt.py) against the independent numbers of
docs/reference.md (sections 1, 2, 5). Skipped when torch is not installed."""
import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from htt_jax.baselines import torch_htt as ref  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

FPHA = dict(num_joints=21, num_objects=26, num_actions=45)
H2O = dict(num_joints=42, num_objects=8, num_actions=36)
T_SMALL, H_SMALL, W_SMALL, N_VALID = 32, 72, 128, 14


@pytest.fixture(scope="module")
def fpha_model():
  torch.manual_seed(0)
  return ref.TemporalNetRef(**FPHA, num_frames=T_SMALL)


def expected_state_dict(num_joints, num_objects, num_actions):
  """reference.md §5.2, written out from its 'exact expanded order' paragraph."""
  f32, i64 = torch.float32, torch.int64
  entries = [("action_token", (1, 1, 512), f32)]
  base = "meshregnet.base_net."

  def conv_bn(conv, bn, shape):
    entries.append((base + conv + ".weight", shape, f32))
    for suffix in ("weight", "bias", "running_mean", "running_var"):
      entries.append((f"{base}{bn}.{suffix}", (shape[0],), f32))
    entries.append((f"{base}{bn}.num_batches_tracked", (), i64))

  conv_bn("conv1", "bn1", (64, 3, 7, 7))
  inplanes = 64
  for layer, planes in enumerate((64, 128, 256, 512), start=1):
    for block in (0, 1):
      p = f"layer{layer}.{block}."
      cin = inplanes if block == 0 else planes
      conv_bn(p + "conv1", p + "bn1", (planes, cin, 3, 3))
      conv_bn(p + "conv2", p + "bn2", (planes, planes, 3, 3))
      if block == 0 and layer > 1:
        conv_bn(p + "downsample.0", p + "downsample.1", (planes, cin, 1, 1))
    inplanes = planes
  entries += [(base + "fc.weight", (1000, 512), f32), (base + "fc.bias", (1000,), f32),
              ("transformer_pe.pe", (1, 5000, 512), f32)]

  def encoder(prefix):
    for i in (0, 1):
      p = f"{prefix}.encoder.layers.{i}."
      entries.extend((p + k, s, f32) for k, s in [
          ("self_attn.in_proj_weight", (1536, 512)), ("self_attn.in_proj_bias", (1536,)),
          ("self_attn.out_proj.weight", (512, 512)), ("self_attn.out_proj.bias", (512,)),
          ("linear1.weight", (2048, 512)), ("linear1.bias", (2048,)),
          ("linear2.weight", (512, 2048)), ("linear2.bias", (512,)),
          ("norm1.weight", (512,)), ("norm1.bias", (512,)),
          ("norm2.weight", (512,)), ("norm2.bias", (512,))])
    entries.extend([(f"{prefix}.encoder.norm.weight", (512,), f32),
                    (f"{prefix}.encoder.norm.bias", (512,), f32)])

  def linear(name, out_dim, in_dim):
    entries.extend([(name + ".weight", (out_dim, in_dim), f32),
                    (name + ".bias", (out_dim,), f32)])

  encoder("transformer_pose")
  linear("image_to_hand_pose.mlp.0", 512, 512)
  linear("image_to_hand_pose.mlp.2", 512, 512)
  linear("image_to_hand_pose.mlp.4", 3 * num_joints, 512)
  linear("image_to_olabel_embed", 512, 512)
  linear("obj_classification.classifier", num_objects, 512)
  linear("hand_pose3d_to_action_input", 512, 2 * num_joints)
  linear("olabel_to_action_input", 512, num_objects)
  linear("concat_to_action_input", 512, 1536)
  encoder("transformer_action")
  linear("action_classification.classifier", num_actions, 512)
  return entries


def test_state_dict_matches_facts(fpha_model):
  got = [(k, tuple(v.shape), v.dtype) for k, v in fpha_model.state_dict().items()]
  want = expected_state_dict(**FPHA)
  assert len(want) == 194
  assert got == want


def test_parameter_counts(fpha_model):
  # reference.md §1.9 (FPHA heads); pe is a buffer, not a parameter.
  want = dict(meshregnet=11_689_512, transformer_pose=6_305_792, transformer_action=6_305_792,
              image_to_hand_pose=557_631, image_to_olabel_embed=262_656,
              obj_classification=13_338, hand_pose3d_to_action_input=22_016,
              olabel_to_action_input=13_824, concat_to_action_input=786_944,
              action_classification=23_085)
  for name, count in want.items():
    assert sum(p.numel() for p in getattr(fpha_model, name).parameters()) == count, name
  assert fpha_model.meshregnet.base_net.fc.weight.numel() + 1000 == 513_000
  assert fpha_model.action_token.numel() == 512
  assert sum(p.numel() for p in fpha_model.parameters()) == 25_981_102
  h2o = ref.TemporalNetRef(**H2O)
  assert sum(p.numel() for p in h2o.parameters()) == 26_011_858
  h2o_shapes = {k: tuple(v.shape) for k, v in h2o.state_dict().items()}
  assert h2o_shapes == {k: s for k, s, _ in expected_state_dict(**H2O)}


def test_positional_encoding_values(fpha_model):
  pe = fpha_model.transformer_pe.pe
  np.testing.assert_allclose(pe[0, 1, :4].numpy(), [0.8414710, 0.5403023, 0.8218562, 0.5696951],
                             atol=1e-7)
  np.testing.assert_allclose(pe[0, 5, 510:512].numpy(), [0.00051832, 0.99999988], atol=1e-8)
  assert torch.equal(fpha_model.transformer_pe(7), pe[:, :7])


def test_to25d_verified_examples():
  # reference.md §1.6 examples with the FPHA intrinsics of reference.md §3.1 (480x270 input).
  k = torch.tensor([[348.93726, 0.0, 233.93314], [0.0, 348.93732, 135.17026], [0.0, 0.0, 1.0]])
  raw = torch.tensor([[[0.0, 0.0, 0.0], [1.0, -0.5, 10.0]]])
  j2d, depth, j3d = ref.to25d(raw, k[None], (270, 480))
  np.testing.assert_allclose(j2d[0].numpy(), [[240, 135], [340, 85]], atol=1e-4)
  np.testing.assert_allclose(depth[0].numpy(), [0.4, 0.748937], atol=1e-6)
  np.testing.assert_allclose(j3d[0].numpy(), [[0.0069547, -0.0001952, 0.4],
                                              [0.2276553, -0.1076823, 0.748937]], atol=1e-6)
  # fy is never used (reference.md §6.6).
  k2 = k.clone()
  k2[1, 1] = 1.0
  assert torch.equal(ref.to25d(raw, k2[None], (270, 480))[2], j3d)


def test_initialisation(fpha_model):
  for enc in (fpha_model.transformer_pose, fpha_model.transformer_action):
    layers = enc.encoder.layers
    for layer in layers:
      for w, bound in [(layer.self_attn.in_proj_weight, math.sqrt(6 / 2048)),
                       (layer.self_attn.out_proj.weight, math.sqrt(6 / 1024)),
                       (layer.linear1.weight, math.sqrt(6 / 2560)),
                       (layer.linear2.weight, math.sqrt(6 / 2560))]:
        a = w.detach().abs()
        assert a.max() <= bound and a.max() > 0.99 * bound
        assert abs(w.detach().std().item() / (bound / math.sqrt(3)) - 1) < 0.03
      assert not layer.self_attn.in_proj_bias.any()
      assert not layer.self_attn.out_proj.bias.any()
      assert layer.linear1.bias.abs().max() <= 1 / math.sqrt(512)
      assert layer.linear2.bias.abs().max() <= 1 / math.sqrt(2048)
      assert torch.all(layer.norm1.weight == 1) and not layer.norm1.bias.any()
    # Layers are deep copies made before the xavier re-init (reference.md §1.3).
    assert torch.equal(layers[0].linear1.bias, layers[1].linear1.bias)
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)
  tok = fpha_model.action_token.detach()
  assert abs(tok.mean()) < 0.2 and 0.85 < tok.std() < 1.15
  w = fpha_model.concat_to_action_input.weight.detach()
  assert w.abs().max() <= 1 / math.sqrt(1536)
  net = fpha_model.meshregnet.base_net
  conv = net.layer4[1].conv2.weight.detach()  # kaiming normal, fan_out = 512*9
  assert abs(conv.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.02
  assert torch.all(net.bn1.weight == 1) and not net.bn1.bias.any()


def test_encoder_matches_facts_formula(fpha_model):
  """reference.md §1.3 written out in float64: pre-norm, PE on q/k only, fused in_proj rows q|k|v,
  8 contiguous heads of 64, scores / 8, True = ignored key, final LN."""
  enc = copy.deepcopy(fpha_model.transformer_action)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in enc.parameters():  # make biases and LN affine non-trivial
      p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 5, 512, generator=g)
    pos = fpha_model.transformer_pe(5)
    mask = torch.tensor([[False, False, True, False, True], [False] * 5])
    got, weights = enc(x, pos, mask)

    def ln(h, m):
      return F.layer_norm(h, (512,), m.weight.double(), m.bias.double(), eps=1e-5)

    h, pos, want_w = x.double(), pos.double(), []
    for layer in enc.encoder.layers:
      a = layer.self_attn
      wq, wk, wv = a.in_proj_weight.double().split(512)
      bq, bk, bv = a.in_proj_bias.double().split(512)
      y = ln(h, layer.norm1)
      heads = lambda z: z.reshape(2, 5, 8, 64).transpose(1, 2)
      q, k = heads((y + pos) @ wq.T + bq), heads((y + pos) @ wk.T + bk)
      v = heads(y @ wv.T + bv)
      scores = (q @ k.transpose(-1, -2) / 8).masked_fill(mask[:, None, None], -math.inf)
      att = scores.softmax(-1)
      want_w.append(att.mean(1))
      o = (att @ v).transpose(1, 2).reshape(2, 5, 512)
      h = h + o @ a.out_proj.weight.double().T + a.out_proj.bias.double()
      f = F.relu(ln(h, layer.norm2) @ layer.linear1.weight.double().T
                 + layer.linear1.bias.double())
      h = h + f @ layer.linear2.weight.double().T + layer.linear2.bias.double()
    want = ln(h, enc.encoder.norm)
  torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
  torch.testing.assert_close(weights.double(), torch.stack(want_w), rtol=1e-5, atol=1e-6)


def test_resnet_map_size_full_resolution(fpha_model):
  with torch.no_grad():
    pooled, fmap = fpha_model.meshregnet.base_net(torch.zeros(1, 3, 270, 480))
  assert fmap.shape == (1, 512, 9, 15) and pooled.shape == (1, 512)  # reference.md §1.1
  torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))


def make_batch(seed, b=1):
  g = torch.Generator().manual_seed(seed)
  n = b * T_SMALL
  s = W_SMALL / 480  # FPHA intrinsics scaled to the small image
  k = torch.tensor([[348.93726 * s, 0, 233.93314 * s], [0, 348.93732 * s, 135.17026 * s],
                    [0, 0, 1]]).expand(n, 3, 3).clone()
  not_padding = torch.zeros(n)
  not_padding.view(b, T_SMALL)[:, :N_VALID] = 1  # window 1 (frames 16..31) entirely padded
  joints25d = torch.rand(n, 21, 3, generator=g) * torch.tensor([W_SMALL, H_SMALL, 0.3])
  joints25d[..., 2] += 0.3
  return dict(images=torch.rand(n, 3, H_SMALL, W_SMALL, generator=g) - 0.5, intrinsics=k,
              not_padding=not_padding, joints25d=joints25d,
              joints3d=torch.rand(n, 21, 3, generator=g) * 0.2,
              object_labels=torch.randint(0, 26, (n,), generator=g),
              action_labels=torch.randint(0, 45, (b,), generator=g))


@pytest.fixture(scope="module")
def train_step_outputs(fpha_model):
  """One train-mode forward/backward on a padded clip; BN statistics before/after."""
  model = fpha_model
  model.train()
  before = {k: v.clone() for k, v in model.state_dict().items()}
  model.zero_grad(set_to_none=True)
  out = model(**make_batch(0))
  out["loss/total"].backward()
  after = model.state_dict()
  return out, before, after


def test_tiny_forward_shapes_and_finite(fpha_model, train_step_outputs):
  out, _, _ = train_step_outputs
  n, b, J = T_SMALL, 1, 21
  shapes = dict(features=(n, 512), pose_tokens=(n, 512), raw_pose=(n, J, 3),
                joints2d=(n, J, 2), depth=(n, J), joints3d=(n, J, 3), object_logits=(n, 26),
                object_probs=(n, 26), action_inputs=(b, T_SMALL, 512),
                action_tokens=(b, T_SMALL + 1, 512), action_logits=(b, 45),
                action_probs=(b, 45), pose_attention=(2, n // 16, 16, 16),
                action_attention=(2, b, T_SMALL + 1, T_SMALL + 1))
  for key, shape in shapes.items():
    assert tuple(out[key].shape) == shape, key
    assert torch.isfinite(out[key]).all(), key
  for key in ("joints2d", "depth", "joints3d", "object", "action", "total"):
    assert out["loss/" + key].shape == () and torch.isfinite(out["loss/" + key]), key
  total = out["loss/joints2d"] + 100 * out["loss/depth"] + out["loss/object"] + out["loss/action"]
  torch.testing.assert_close(out["loss/total"], total)
  # Masked keys get zero weight; the all-padding window attends only to its forced first key.
  pa, aa = out["pose_attention"], out["action_attention"]
  assert not pa[:, 0, :, N_VALID:].any()
  torch.testing.assert_close(pa[:, 1, :, 0], torch.ones(2, 16))
  assert not aa[:, :, :, 1 + N_VALID:].any()


def test_heads_wiring_matches_facts(fpha_model, train_step_outputs):
  """reference.md §1.5-1.8 from the returned intermediates: joint-major pose, To25D on the image
  size, linear object head, fusion columns [g | pose (a, b pairs) | object probs]."""
  out = {k: v.detach() for k, v in train_step_outputs[0].items()}
  m, n = fpha_model, T_SMALL
  g, raw = out["pose_tokens"], out["raw_pose"]
  with torch.no_grad():
    mlp = m.image_to_hand_pose.mlp
    h = F.leaky_relu(mlp[0](g), 0.01)
    flat = mlp[4](F.leaky_relu(mlp[2](h), 0.01))
    torch.testing.assert_close(raw, flat.reshape(n, 21, 3))  # unit 3j+c
    k = make_batch(0)["intrinsics"]
    for key, value in zip(("joints2d", "depth", "joints3d"),
                          ref.to25d(raw, k, (H_SMALL, W_SMALL))):
      torch.testing.assert_close(out[key], value)
    logits = m.obj_classification.classifier(m.image_to_olabel_embed(g))
    torch.testing.assert_close(out["object_logits"], logits)
    torch.testing.assert_close(out["object_probs"], logits.softmax(-1))
    pose = torch.stack([raw[..., 0], raw[..., 1]], -1).reshape(n, 42)  # [j0a, j0b, j1a, ...]
    wc = m.concat_to_action_input.weight
    fused = (g @ wc[:, :512].T + m.hand_pose3d_to_action_input(pose) @ wc[:, 512:1024].T
             + m.olabel_to_action_input(out["object_probs"]) @ wc[:, 1024:].T
             + m.concat_to_action_input.bias)
    torch.testing.assert_close(out["action_inputs"][0], fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["action_logits"],
                               m.action_classification.classifier(out["action_tokens"][:, 0]))
    # P: windows of 16, positions 0..15, first key forced valid (reference.md §1.4).
    pmask = torch.ones(2, 16, dtype=torch.bool)
    pmask[0, :N_VALID] = False
    pmask[:, 0] = False
    p_out, _ = m.transformer_pose(out["features"].reshape(2, 16, 512),
                                  m.transformer_pe.pe[:, :16], pmask)
    torch.testing.assert_close(p_out.reshape(n, 512), g, rtol=1e-5, atol=1e-5)
    # A: action token at position 0, frames at 1..T, padded frames masked (reference.md §1.8).
    tokens = torch.cat([m.action_token, out["action_inputs"]], 1)
    amask = torch.arange(n + 1)[None] > N_VALID
    a_out, _ = m.transformer_action(tokens, m.transformer_pe.pe[:, :n + 1], amask)
    torch.testing.assert_close(a_out, out["action_tokens"], rtol=1e-5, atol=1e-5)


def test_bn_stays_in_eval_mode(fpha_model, train_step_outputs):
  _, before, after = train_step_outputs
  assert fpha_model.training
  bns = [m for m in fpha_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  assert len(bns) == 20 and not any(m.training for m in bns)
  for k, v in before.items():
    if "running_" in k or "num_batches_tracked" in k:
      assert torch.equal(v, after[k]), k
  net = fpha_model.meshregnet.base_net
  assert net.fc.weight.grad is None  # the unused ImageNet head (reference.md §1.1)
  assert net.bn1.weight.grad is not None and net.layer4[1].bn2.bias.grad is not None
  assert fpha_model.action_token.grad is not None


def test_padded_frames_do_not_change_valid_outputs(fpha_model, train_step_outputs):
  out, _, _ = train_step_outputs
  batch = make_batch(0)
  batch["images"][N_VALID:] = torch.rand(T_SMALL - N_VALID, 3, H_SMALL, W_SMALL) - 0.5
  batch["joints25d"][N_VALID:] += 5.0
  batch["object_labels"][N_VALID:] = 0
  with torch.no_grad():
    out2 = fpha_model(**batch)
  for key in ("action_logits", "joints3d", "object_logits", "loss/total"):
    a, b = out[key].detach(), out2[key]
    if key in ("joints3d", "object_logits"):
      a, b = a[:N_VALID], b[:N_VALID]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def synthetic_outputs(not_padding, j=3, n_o=5, n_a=4, seed=0):
  g = torch.Generator().manual_seed(seed)
  n, b = len(not_padding), 2
  r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
  out = dict(joints2d=r(n, j, 2), depth=r(n, j), joints3d=r(n, j, 3),
             object_logits=r(n, n_o), action_logits=r(b, n_a))
  labels = dict(joints25d=r(n, j, 3), joints3d=r(n, j, 3),
                object_labels=torch.randint(0, n_o, (n,), generator=g),
                action_labels=torch.randint(0, n_a, (b,), generator=g))
  return out, labels


def manual_terms(out, labels, w, pose_loss="l1"):
  """reference.md §2.1-2.3 formulas written out in numpy (one normalisation group)."""
  e = (lambda x: np.abs(x)) if pose_loss == "l1" else (lambda x: x ** 2)
  w = np.asarray(w, np.float64)
  s = max(w.sum(), 1.0)
  j = out["depth"].shape[1]
  d2 = e(out["joints2d"].numpy() - labels["joints25d"][..., :2].numpy()).sum((1, 2))
  dz = e(out["depth"].numpy() - labels["joints25d"][..., 2].numpy()).sum(1)
  d3 = e(out["joints3d"].numpy() - labels["joints3d"].numpy()).sum((1, 2))
  logits = out["object_logits"].numpy()
  lse = np.log(np.exp(logits).sum(1))
  ce = lse - logits[np.arange(len(w)), labels["object_labels"].numpy()]
  return {"loss/joints2d": (w * d2).sum() / (2 * j * s), "loss/depth": (w * dz).sum() / (j * s),
          "loss/joints3d": (w * d3).sum() / (3 * j * s), "loss/object": (w * ce).sum() / w.sum()}


@pytest.mark.parametrize("pose_loss", ["l1", "l2"])
def test_loss_normalisation(pose_loss):
  w = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0], dtype=torch.float64)  # B=2 clips of T=4
  out, labels = synthetic_outputs(w)
  lam = dict(lambda_hand_2d=2.0, lambda_hand_z=100.0, lambda_object=0.5, lambda_action=3.0)
  frame = ref.reference_losses(out, w, **labels, normalization="frame", pose_loss=pose_loss,
                               **lam)
  clip = ref.reference_losses(out, w, **labels, normalization="clip", pose_loss=pose_loss,
                              **lam)
  want_frame = manual_terms(out, labels, w.numpy(), pose_loss)
  per_clip = [manual_terms({k: v[4 * c:4 * c + 4] for k, v in out.items()},
                           {k: v[4 * c:4 * c + 4] for k, v in labels.items()},
                           w.numpy()[4 * c:4 * c + 4], pose_loss) for c in range(2)]
  for key, value in want_frame.items():
    np.testing.assert_allclose(frame[key].item(), value, rtol=1e-12)
    np.testing.assert_allclose(clip[key].item(), np.mean([p[key] for p in per_clip]),
                               rtol=1e-12)
  action = torch.nn.functional.cross_entropy(out["action_logits"], labels["action_labels"])
  for terms in (frame, clip):
    torch.testing.assert_close(terms["loss/action"], action)
    total = (2 * terms["loss/joints2d"] + 100 * terms["loss/depth"]
             + 0.5 * terms["loss/object"] + 3 * terms["loss/action"])
    torch.testing.assert_close(terms["loss/total"], total)
    assert all(v.shape == () for v in terms.values())
  # S == 0 -> 1 guard for the hand terms (reference.md §2.1).
  zero = ref.reference_losses(out, torch.zeros(8, dtype=torch.float64), **labels)
  assert zero["loss/joints2d"] == 0 and zero["loss/depth"] == 0


def test_checkpoint_file_format(fpha_model, tmp_path):
  path = tmp_path / "checkpoint_45.pth"
  ref.save_reference_checkpoint(fpha_model, path, epoch=45, module_prefix=True)
  ckpt = torch.load(path, map_location="cpu", weights_only=False)
  assert set(ckpt) == {"epoch", "network", "state_dict", "optimizer", "scheduler"}
  assert ckpt["epoch"] == 45 and ckpt["network"] == "HTT"
  sd = ckpt["state_dict"]
  assert list(sd) == ["module." + k for k in fpha_model.state_dict()]
  sched = ckpt["scheduler"]
  assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
  assert sched.step_size == 15.0 and sched.gamma == 0.5 and sched.last_epoch == 45
  assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(3e-5 * 0.5 ** 3)
  assert len(ckpt["optimizer"]["state"]) == len(list(fpha_model.parameters())) - 2  # not fc
  # The authors' loader: strip the first dotted component when the first key has "module".
  stripped = {k.split(".", 1)[1]: v for k, v in sd.items()}
  for k, v in fpha_model.state_dict().items():
    assert torch.equal(stripped[k], v), k
  step = ckpt["optimizer"]["state"][0]
  assert set(step) == {"step", "exp_avg", "exp_avg_sq"}
  assert step["exp_avg"].shape == fpha_model.action_token.shape
  bare = tmp_path / "bare.pth"
  ref.save_reference_checkpoint(fpha_model, bare, nested=False)
  assert list(torch.load(bare, map_location="cpu")) == list(fpha_model.state_dict())
