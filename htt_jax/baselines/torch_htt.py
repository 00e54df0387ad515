"""Independent PyTorch reference of the HTT model (Wen et al., CVPR 2023).

Written from torch.nn primitives and `docs/reference.md` (sections 1, 2 and 5; cited as
"reference.md §x.y"), not from the authors' code. It is the ground truth for the Flax parity tests
and the PyTorch benchmark baseline, so it reproduces the authors' behaviour exactly, quirks
included: its `state_dict()` has the same 194 keys (FPHA), shapes, dtypes and order as a reference
checkpoint (reference.md §5.2), so released `.pth` files load into it unchanged.

Public API:
    TemporalNetRef(num_joints, num_objects, num_actions, ...)   the model, forward() -> dict
    to25d(raw, intrinsics, image_hw)                             reference.md §1.6
    positional_encoding(max_len, dim)                            reference.md §1.2
    reference_losses(...)                                        reference.md §2.1-2.4
    save_reference_checkpoint(model, path, ...)                  reference.md §5.1
"""
import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5  # reference.md §1.3 / §6.21 (PyTorch default; Flax's is 1e-6)
BN_EPS = 1e-5  # reference.md §1.1 / §6.21
TRANS_FACTOR = 100.0  # reference.md §1.6
SCALE_FACTOR = 1e-4
OFF_Z = 0.4


# ---- ResNet-18, torchvision module names (reference.md §1.1). ------------------------------------
class BasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    # Stride sits in the first 3x3 conv (ResNet v1 / torchvision, reference.md §1.1).
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes, eps=BN_EPS)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride, 0, bias=False),
          nn.BatchNorm2d(planes, eps=BN_EPS))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class ResNet18(nn.Module):
  def __init__(self, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)  # pads with -inf, like reference.md §1.1 asks of JAX
    self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
    self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
    self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
    self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
    # Both exist in the reference but are unused: the features are a plain spatial mean and
    # fc (ImageNet head) never gets a gradient; fc is still in the state_dict (reference.md §1.1).
    self.avgpool = nn.AvgPool2d(7)
    self.fc = nn.Linear(512, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.mean(dim=(2, 3)), x


class ResNetWrapper(nn.Module):
  """Holds the backbone as `base_net` so keys read `meshregnet.base_net.*` (reference.md §5.2)."""

  def __init__(self):
    super().__init__()
    self.base_net = ResNet18()

  def forward(self, images):
    return self.base_net(images)[0]


# ---- Positional encoding and pre-norm DETR-style encoder (reference.md §1.2, §1.3). --------------
def positional_encoding(max_len=5000, dim=512):
  """(1, max_len, dim) float32; even channels sin, odd channels cos (reference.md §1.2)."""
  position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
  div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
  pe = torch.zeros(max_len, dim, dtype=torch.float32)
  pe[:, 0::2] = torch.sin(position * div_term)
  pe[:, 1::2] = torch.cos(position * div_term)
  return pe.unsqueeze(0)


class PositionalEncoding(nn.Module):
  def __init__(self, dim=512, max_len=5000):
    super().__init__()
    # A persistent buffer: it is in the checkpoints as `transformer_pe.pe` (reference.md §1.2).
    self.register_buffer("pe", positional_encoding(max_len, dim))

  def forward(self, length):
    # Returns the encoding only; the encoder adds it to q and k (reference.md §1.2).
    return self.pe[:, :length]


class EncoderLayer(nn.Module):
  """Pre-norm layer (normalize_before=True, reference.md §1.3); dropout is hard-coded 0
  so omitted."""

  def __init__(self, dim, num_heads, mlp_dim):
    super().__init__()
    # batch_first=False like the reference; inputs are (L, B, E).
    self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0)
    self.linear1 = nn.Linear(dim, mlp_dim)
    self.linear2 = nn.Linear(mlp_dim, dim)
    self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
    self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)

  def forward(self, x, pos, key_padding_mask, need_weights):
    y = self.norm1(x)
    qk = y + pos  # PE on queries and keys only, never on values / residual (reference.md §1.2)
    attn, weights = self.self_attn(qk, qk, y, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, average_attn_weights=True)
    x = x + attn
    x = x + self.linear2(F.relu(self.linear1(self.norm2(x))))
    return x, weights


class Encoder(nn.Module):
  def __init__(self, dim, num_heads, mlp_dim, num_layers):
    super().__init__()
    layer = EncoderLayer(dim, num_heads, mlp_dim)
    # Deep copies of one layer: FFN biases start identical across layers (reference.md §1.3).
    self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
    self.norm = nn.LayerNorm(dim, eps=LN_EPS)  # final LN (exists because pre-norm)

  def forward(self, x, pos, key_padding_mask, need_weights):
    weights = []
    for layer in self.layers:
      x, w = layer(x, pos, key_padding_mask, need_weights)
      weights.append(w)
    return self.norm(x), (torch.stack(weights) if need_weights else None)


class TransformerEncoderRef(nn.Module):
  """Holds the encoder as `.encoder` (keys `transformer_*.encoder.*`, reference.md §5.2)."""

  def __init__(self, dim, num_heads, mlp_dim, num_layers):
    super().__init__()
    self.encoder = Encoder(dim, num_heads, mlp_dim, num_layers)
    # Xavier on every >=2-dim parameter, the fused (3d, d) in_proj_weight as ONE matrix;
    # MHA biases are already 0 from nn.MultiheadAttention, FFN biases keep Linear default
    # (reference.md §1.3, §6.20).
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.xavier_uniform_(p)

  def forward(self, x, pos, key_padding_mask, need_weights=True):
    """x (B, L, E), pos (1, L, E), key_padding_mask (B, L) bool, True = ignored key."""
    out, weights = self.encoder(x.transpose(0, 1), pos.transpose(0, 1), key_padding_mask,
                                need_weights)
    return out.transpose(0, 1), weights


class MLP(nn.Module):
  """Hand pose MLP, keys `image_to_hand_pose.mlp.{0,2,4}` (reference.md §1.5)."""

  def __init__(self, dim, out_dim):
    super().__init__()
    self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.01), nn.Linear(dim, dim),
                             nn.LeakyReLU(0.01), nn.Linear(dim, out_dim))

  def forward(self, x):
    return self.mlp(x)


class Classifier(nn.Module):
  """ActionClassificationBranch: one Linear named `classifier` (reference.md §1.7)."""

  def __init__(self, dim, num_classes):
    super().__init__()
    self.classifier = nn.Linear(dim, num_classes)

  def forward(self, x):
    return self.classifier(x)


# ---- Geometry (reference.md §1.6). ---------------------------------------------------------------
def to25d(raw, intrinsics, image_hw):
  """raw (N,J,3) = (a, b, s) -> joints2d (N,J,2) px, depth (N,J) m, joints3d (N,J,3) m.

  image_hw = (H, W) of the image tensor fed to the network. Only fx, cx, cy are used; Y is
  back-projected with fx as well (reference.md §1.6, §6.6).
  """
  height, width = image_hw
  fx = intrinsics[:, 0, 0].unsqueeze(1)
  cx = intrinsics[:, 0, 2].unsqueeze(1)
  cy = intrinsics[:, 1, 2].unsqueeze(1)
  u = TRANS_FACTOR * raw[..., 0] + width / 2
  v = TRANS_FACTOR * raw[..., 1] + height / 2
  z = fx * (SCALE_FACTOR * raw[..., 2]) + OFF_Z
  x = (u - cx) * z / fx
  y = (v - cy) * z / fx
  return torch.stack([u, v], -1), z, torch.stack([x, y, z], -1)


# ---- Losses (reference.md §2.1-2.4). -------------------------------------------------------------
def reference_losses(outputs, not_padding, joints25d, joints3d, object_labels, action_labels,
                     normalization="frame", pose_loss="l1", lambda_hand_2d=1.0,
                     lambda_hand_z=100.0, lambda_object=1.0, lambda_action=1.0):
  """Loss terms as 0-dim tensors.

  normalization='frame': one group, every term normalised over all valid frames of the batch
  (single-device reference). 'clip': each clip is its own group normalised by its own valid
  frames, then terms are averaged over clips (DataParallel, one clip per GPU;
  reference.md §2.6, §6.8).
  """
  action_logits = outputs["action_logits"]
  num_clips = action_logits.shape[0]
  if normalization == "frame":
    groups = 1
  elif normalization == "clip":
    groups = num_clips
  else:
    raise ValueError(f"loss_normalization must be 'frame' or 'clip', got {normalization!r}")
  if pose_loss == "l1":
    err = lambda p, t: (p - t).abs()
  elif pose_loss == "l2":
    err = lambda p, t: (p - t) ** 2
  else:
    raise ValueError(f"pose_loss must be 'l1' or 'l2', got {pose_loss!r}")

  w = not_padding.reshape(groups, -1).to(action_logits.dtype)  # original mask, not P's
  s = w.sum(1)
  s_hand = torch.where(s == 0, torch.ones_like(s), s)  # S == 0 -> 1 guard, hand terms only

  def hand_term(pred, target):  # per frame: mean over J (and coords), then weighted mean
    per_frame = err(pred, target).flatten(1).mean(1).reshape(groups, -1)
    return ((w * per_frame).sum(1) / s_hand).mean()

  terms = {
      "loss/joints2d": hand_term(outputs["joints2d"], joints25d[..., :2]),
      "loss/depth": hand_term(outputs["depth"], joints25d[..., 2]),
      # Reported (recov_joint3d) but not part of the total (reference.md §2.1).
      "loss/joints3d": hand_term(outputs["joints3d"], joints3d),
  }
  ce_obj = F.cross_entropy(outputs["object_logits"], object_labels.long(), reduction="none")
  # No zero guard here, like the reference (reference.md §2.2); a clip's first frame is
  # always valid.
  terms["loss/object"] = ((w * ce_obj.reshape(groups, -1)).sum(1) / s).mean()
  ce_act = F.cross_entropy(action_logits, action_labels.long(), reduction="none")
  terms["loss/action"] = ce_act.reshape(groups, -1).mean(1).mean()
  # Every term is linear in the per-group terms, so averaging the terms averages the totals.
  terms["loss/total"] = (lambda_hand_2d * terms["loss/joints2d"]
                         + lambda_hand_z * terms["loss/depth"]
                         + lambda_object * terms["loss/object"]
                         + lambda_action * terms["loss/action"])
  return terms


# ---- The model (reference.md §1.4-1.8). ----------------------------------------------------------
class TemporalNetRef(nn.Module):
  def __init__(self, num_joints, num_objects, num_actions, window=16, num_frames=128,
               hidden_dim=512, num_heads=8, mlp_dim=2048, num_layers=2, pose_loss="l1",
               lambda_hand_2d=1.0, lambda_hand_z=100.0, lambda_object=1.0, lambda_action=1.0):
    super().__init__()
    if hidden_dim != 512:
      raise ValueError(
          "hidden_dim must be 512: ResNet-18 features feed P directly (reference.md §0)")
    if num_frames % window:
      raise ValueError("num_frames must be a multiple of window (reference.md §1.4)")
    self.num_joints, self.window, self.num_frames = num_joints, window, num_frames
    self.hidden_dim = hidden_dim
    self.pose_loss = pose_loss
    self.lambdas = dict(lambda_hand_2d=lambda_hand_2d, lambda_hand_z=lambda_hand_z,
                        lambda_object=lambda_object, lambda_action=lambda_action)
    d = hidden_dim
    # Registration order = state_dict order (reference.md §5.2); action_token, a parameter of this
    # module, comes first whatever its position here. Init N(0,1) (reference.md §1.8).
    self.action_token = nn.Parameter(torch.randn(1, 1, d))
    self.meshregnet = ResNetWrapper()
    self.transformer_pe = PositionalEncoding(d)
    self.transformer_pose = TransformerEncoderRef(d, num_heads, mlp_dim, num_layers)
    self.image_to_hand_pose = MLP(d, 3 * num_joints)
    self.image_to_olabel_embed = nn.Linear(d, d)
    self.obj_classification = Classifier(d, num_objects)
    self.hand_pose3d_to_action_input = nn.Linear(2 * num_joints, d)
    self.olabel_to_action_input = nn.Linear(num_objects, d)
    self.concat_to_action_input = nn.Linear(3 * d, d)
    self.transformer_action = TransformerEncoderRef(d, num_heads, mlp_dim, num_layers)
    self.action_classification = Classifier(d, num_actions)
    for m in self.modules():  # freeze_batchnorm_stats (reference.md §1.1)
      if isinstance(m, nn.BatchNorm2d):
        m.momentum = 0.0
    self.train()

  def train(self, mode=True):
    """The reference calls model.eval() even while training, so BN always normalises with
    its running statistics (reference.md §1.1, §6.4); BN gamma/beta still get gradients. Dropout is
    0 everywhere, so BN is the only module whose mode matters."""
    super().train(mode)
    for m in self.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.train(False)
    return self

  def forward(self, images, intrinsics, not_padding, joints25d=None, joints3d=None,
              object_labels=None, action_labels=None, loss_normalization="frame",
              return_attention=True):
    """images (N,3,H,W) float32 already x/255-0.5, N = B*T clip-major; intrinsics (N,3,3);
    not_padding (N,) 0/1. Losses are added when all four label tensors are given.
    return_attention=False skips the head-averaged weights (lets PyTorch use its fused
    attention; for benchmarking)."""
    n = images.shape[0]
    t, T, d, J = self.window, self.num_frames, self.hidden_dim, self.num_joints
    if n % T:
      raise ValueError(f"number of frames {n} is not a multiple of num_frames={T}")
    b = n // T
    valid = not_padding.reshape(n).to(images.dtype)

    features = self.meshregnet(images)  # (N, 512)

    # Block P over windows of t consecutive frames; positions restart at 0 per window and
    # the first key of each window is always valid (reference.md §1.4).
    w = valid.reshape(n // t, t).clone()
    w[:, 0] = 1
    pose_tokens, pose_attention = self.transformer_pose(
        features.reshape(n // t, t, d), self.transformer_pe(t), w == 0, return_attention)
    pose_tokens = pose_tokens.reshape(n, d)

    raw_pose = self.image_to_hand_pose(pose_tokens).reshape(n, J, 3)  # joint-major (1.5)
    joints2d, depth, joints3d_pred = to25d(raw_pose, intrinsics, images.shape[-2:])

    # Object branch: two linears, no activation; probabilities feed A (reference.md §1.7).
    object_logits = self.obj_classification(self.image_to_olabel_embed(pose_tokens))
    object_probs = object_logits.softmax(-1)

    # Fusion order [g, pose, obj] (reference.md §1.8, §6.1); pose = raw (a, b) before x100.
    fused = torch.cat([pose_tokens,
                       self.hand_pose3d_to_action_input(raw_pose[..., :2].reshape(n, 2 * J)),
                       self.olabel_to_action_input(object_probs)], dim=-1)
    action_inputs = self.concat_to_action_input(fused).reshape(b, T, d)

    # Block A: action token at position 0, frames at 1..T; padded frames masked as keys.
    tokens = torch.cat([self.action_token.expand(b, -1, -1), action_inputs], dim=1)
    mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=images.device),
                      valid.reshape(b, T) == 0], dim=1)
    action_tokens, action_attention = self.transformer_action(
        tokens, self.transformer_pe(T + 1), mask, return_attention)
    action_logits = self.action_classification(action_tokens[:, 0])

    out = {
        "features": features, "pose_tokens": pose_tokens, "raw_pose": raw_pose,
        "joints2d": joints2d, "depth": depth, "joints3d": joints3d_pred,
        "object_logits": object_logits, "object_probs": object_probs,
        "action_inputs": action_inputs, "action_tokens": action_tokens,
        "action_logits": action_logits, "action_probs": action_logits.softmax(-1),
    }
    if return_attention:
      out["pose_attention"] = pose_attention  # (layers, N/t, t, t)
      out["action_attention"] = action_attention  # (layers, B, T+1, T+1)
    labels = (joints25d, joints3d, object_labels, action_labels)
    if all(x is not None for x in labels):
      out.update(reference_losses(out, valid, *labels, normalization=loss_normalization,
                                  pose_loss=self.pose_loss, **self.lambdas))
    elif any(x is not None for x in labels):
      raise ValueError("give all of joints25d, joints3d, object_labels, action_labels")
    return out


# ---- Checkpoint files in the authors' format (reference.md §5.1). --------------------------------
def save_reference_checkpoint(model, path, epoch=45, include_optimizer=True,
                              module_prefix=False, nested=True):
  """Write `path` like the authors' train.py: torch.save({"epoch", "network": "HTT",
  "state_dict", "optimizer", "scheduler"}) (reference.md §5.1).

  optimizer: Adam(lr=3e-5) over all trainable parameters, with Adam's own state layout
  (step, exp_avg, exp_avg_sq; filled with step 1 and zero moments) for every parameter but the
  never-used fc, which a trained checkpoint has no state for. scheduler: the StepLR OBJECT
  (step_size=15.0, a float as in the reference; gamma=0.5) stepped `epoch` times; pickling it
  pickles the optimizer and its parameters too (shared storages, stored once). Read back with
  torch.load(path, map_location="cpu", weights_only=False) (reference.md §6.22).
  module_prefix=True prefixes every key with "module."; nested=False saves the bare
  state_dict (include_optimizer is then ignored).
  """
  state_dict = model.state_dict()
  if module_prefix:
    state_dict = type(state_dict)(("module." + k, v) for k, v in state_dict.items())
  if not nested:
    torch.save(state_dict, path)
    return
  checkpoint = {"epoch": epoch, "network": "HTT", "state_dict": state_dict}
  if include_optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-5, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=15.0, gamma=0.5)
    # Filled by hand rather than by an optimizer step: no gradients or parameters touched.
    fc = {id(p) for p in model.meshregnet.base_net.fc.parameters()}
    for p in params:
      if id(p) not in fc:
        optimizer.state[p] = {"step": torch.tensor(1.0),
                              "exp_avg": torch.zeros_like(p.detach()),
                              "exp_avg_sq": torch.zeros_like(p.detach())}
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
      warnings.simplefilter("ignore", UserWarning)
      for _ in range(epoch):
        scheduler.step()
    checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint["scheduler"] = scheduler
  torch.save(checkpoint, path)
