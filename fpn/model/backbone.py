"""ResNet backbone returning C2..C5 (strides 4, 8, 16, 32; layer4 keeps its stride 2).

Driven by ``cfg.model``:

* ``backbone``: res18 | res34 | res50 | res101 | res152 (torchvision ResNets);
* ``norm``: ``frozen_bn`` (affine BatchNorm with fixed statistics, for fine-tuning pretrained
  weights at small batch sizes), ``bn`` (trainable BatchNorm, for training from scratch), ``gn``
  (GroupNorm, 32 groups);
* ``fuse_frozen_bn``: a frozen BatchNorm is applied through the weight and bias of the convolution before it
  (``fuse_frozen_batchnorm``), not as a pass over its output;
* ``freeze_at``: 0 nothing frozen, 1 stem + layer1, 2 + layer2, ... 4 everything. Frozen stages have
  ``requires_grad = False`` and, with ``bn``, stay in eval mode (their running statistics never move);
* ``pretrained``: ``imagenet`` (torchvision's IMAGENET1K_V1 weights, downloaded/cached by torchvision;
  needs data.normalization=imagenet), ``none``, or a path to a ``.pth`` state dict in torchvision
  format. A file whose name contains "caffe" (e.g. the seed's ``resnet101_caffe.pth``) is a caffe
  ResNet: same key names, but the stride of each stage sits on the bottleneck's first 1x1 conv and
  the stem's max-pool has no padding and rounds up; the architecture follows the file name, and the
  inputs must be caffe-normalised (BGR, 0-255, mean only): see ``uses_caffe_weights``.

Loading problems (missing, unreadable or mismatched file; no network for ``imagenet``) raise
``fpn.errors.UserError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config import Config
from fpn.errors import UserError
from fpn.model.ops.frozen_bn import folded_conv_norm, plain_conv_norm

DEPTHS = {"res18": 18, "res34": 34, "res50": 50, "res101": 101, "res152": 152}
NORMS = ("frozen_bn", "bn", "gn")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def uses_caffe_weights(cfg: Config) -> bool:
    """True when ``cfg.model.pretrained`` names caffe-format weights (file name contains "caffe").
    Such weights expect ``cfg.data.normalization == "caffe"``."""
    p = cfg.model.pretrained
    return p not in ("imagenet", "none") and "caffe" in Path(p).name.lower()


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    return lambda c: nn.GroupNorm(32, c)


class ResNetBackbone(nn.Module):
    """Stem + layer1..layer4 of a torchvision ResNet with the same parameter names (so torchvision
    state dicts load directly); ``forward`` returns [C2, C3, C4, C5]."""

    def __init__(self, depth: int, norm: str = "frozen_bn", freeze_at: int = 1, caffe: bool = False, width: int = 64):
        super().__init__()
        if width == 64:
            net = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=_norm_layer(norm))
        else:
            net = _NarrowResNet(depth, width, _norm_layer(norm))
        if caffe:
            # caffe ResNets downsample in the bottleneck's 1x1 conv1 (torchvision: in the 3x3 conv2);
            # BasicBlocks (res18/34) have no 1x1 conv and are unchanged
            for stage in STAGES[1:]:
                first = getattr(net, stage)[0]
                if isinstance(first, torchvision.models.resnet.Bottleneck):
                    first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
            net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [width * expansion * 2**i for i in range(4)]
        self.strides = (4, 8, 16, 32)
        self.frozen: list[nn.Module] = []
        if freeze_at >= 1:
            self.frozen = [self.conv1, self.bn1] + [getattr(self, s) for s in STAGES[:freeze_at]]
        for m in self.frozen:
            for p in m.parameters():
                p.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:  # frozen stages keep their BatchNorm statistics
            m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class _NarrowResNet(torchvision.models.resnet.ResNet):
    """A torchvision ResNet whose stage widths are ``width * (1, 2, 4, 8)`` instead of 64 * (1, 2, 4, 8):
    same blocks and depths, a quarter of the compute at width 32. For training from scratch on small
    data (the ``synthetic`` preset); ImageNet weights exist only for width 64."""

    def __init__(self, depth: int, width: int, norm_layer):
        nn.Module.__init__(self)  # torchvision's __init__ hard-codes width 64; rebuild with its helpers
        block = torchvision.models.resnet.BasicBlock if depth < 50 else torchvision.models.resnet.Bottleneck
        layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
        self._norm_layer, self.dilation, self.groups, self.base_width = norm_layer, 1, 1, 64
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_backbone(cfg: Config, load_weights: bool = True, *, conv_norm=plain_conv_norm) -> ResNetBackbone:
    """The backbone ``cfg.model`` describes; ``load_weights=False`` skips ``cfg.model.pretrained``
    (the architecture, caffe or not, still follows it) for when a checkpoint is loaded afterwards."""
    m = cfg.model
    if m.backbone not in DEPTHS:
        raise UserError(f"model.backbone: unknown backbone '{m.backbone}'; choose one of: {', '.join(DEPTHS)}")
    if m.norm not in NORMS:
        raise UserError(f"model.norm: unknown norm '{m.norm}'; choose one of: {', '.join(NORMS)}")
    if not 0 <= m.freeze_at <= 4:
        raise UserError(f"model.freeze_at: must be 0..4 (0 nothing, 1 stem+layer1, ... 4 all), got {m.freeze_at}")
    if m.backbone_width < 8 or (m.norm == "gn" and m.backbone_width % 32):
        raise UserError(f"model.backbone_width: must be at least 8 (a multiple of 32 with gn), got {m.backbone_width}")
    if m.backbone_width != 64 and load_weights and m.pretrained != "none":
        raise UserError(f"model.backbone_width={m.backbone_width}: pretrained weights exist only for width 64; "
                        "set model.pretrained=none")
    caffe = uses_caffe_weights(cfg)
    backbone = ResNetBackbone(DEPTHS[m.backbone], m.norm, m.freeze_at, caffe=caffe, width=m.backbone_width)
    if load_weights and m.pretrained != "none":
        if m.pretrained == "imagenet":
            state, source = _imagenet_state_dict(m.backbone), f"torchvision ImageNet weights for {m.backbone}"
        else:
            state, source = read_state_dict(m.pretrained), m.pretrained
        load_backbone_weights(backbone, state, source, drop_bn_stats=m.norm == "gn")
    if m.norm == "frozen_bn" and conv_norm is folded_conv_norm:
        fuse_frozen_batchnorm(backbone)
    return backbone


def _imagenet_state_dict(name: str) -> dict:
    weights = torchvision.models.get_model_weights(f"resnet{DEPTHS[name]}").IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # no network, proxy, corrupt cache...
        raise UserError(
            f"model.pretrained=imagenet: could not get {weights.url} ({type(e).__name__}: {e}); "
            "connect to the internet once (torchvision caches it), or set model.pretrained to a local .pth file "
            "or to none"
        ) from None


def read_state_dict(path: str | Path, missing: str = "pretrained weight file not found (model.pretrained)") -> dict:
    """The state dict in a .pth file (also inside a {"state_dict": ...} or {"model": ...} wrapper); a missing
    or unreadable file, or one holding something else, is a one-line UserError (``missing``: its wording)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: {missing}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message is many lines (and suggests weights_only=False): keep the type only
        raise UserError(f"{path}: not a readable PyTorch weight file ({type(e).__name__})") from None
    # accept {"state_dict": ...} / {"model": ...} wrappers around the state dict
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return obj


def load_backbone_weights(backbone: ResNetBackbone, state: dict, source: str, drop_bn_stats: bool = False) -> None:
    """Load a torchvision-format ResNet state dict (the classifier ``fc.*`` is ignored); any other
    mismatch is a UserError naming ``source``."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    if drop_bn_stats:  # GroupNorm has only the affine parameters
        state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{source}: weights do not fit the backbone ({first})") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys, e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys, e.g. {', '.join(unexpected[:3])}")
        raise UserError(f"{source}: weights do not match the backbone ({'; '.join(parts)})")


def _conv_norm_pairs(backbone: nn.Module):
    """(parent, norm name, conv, norm) for every BatchNorm (frozen or not) that follows a convolution of
    matching width: conv1 -> bn1 (stem and blocks), downsample "0" -> "1"."""
    for parent in list(backbone.modules()):
        for name, norm in list(parent.named_children()):
            if not isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                continue
            conv = getattr(parent, name.replace("bn", "conv") if name.startswith("bn") else str(int(name) - 1), None)
            if isinstance(conv, nn.Conv2d) and conv.out_channels == norm.weight.numel():
                yield parent, name, conv, norm


def _scale_and_shift(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """The per-channel affine map a BatchNorm in eval mode applies: x * scale + shift, each (C,)."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


class _AppliedByConv(FrozenBatchNorm2d):
    """A frozen BatchNorm whose scale and shift its convolution (``FrozenBNConv2d``) applies: the identity here.
    Same parameters and buffers, so state dicts and checkpoints do not change."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class FrozenBNConv2d(nn.Conv2d):
    """A convolution followed by a frozen BatchNorm, computed as one convolution: weight ``W * scale`` and bias
    ``b * scale + shift``, formed in every forward from the current values (a weight-sized product instead of an
    activation-sized pass; the weight's gradient is the chain rule's ``dL/dW' * scale``, as unfolded). The norm
    stays in the module tree under its own name (``_AppliedByConv``); ``self.norm`` only points at it."""

    norm: FrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = _scale_and_shift(self.norm)
        weight = self.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in, k, k): one scale per output channel
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, weight, bias)


def fuse_frozen_batchnorm(backbone: nn.Module) -> int:
    """Training and inference: every frozen BatchNorm after a convolution is applied through that convolution's
    weight and bias (``FrozenBNConv2d``), removing an elementwise pass over every activation. In place; parameter
    names, state dicts and gradients stay as they were (tests compare outputs and gradients with the unfused
    backbone). Returns how many norms were fused."""
    fused = 0
    for _, _, conv, norm in _conv_norm_pairs(backbone):
        if type(norm) is not FrozenBatchNorm2d or type(conv) is not nn.Conv2d:
            continue
        norm.__class__ = _AppliedByConv
        conv.__class__ = FrozenBNConv2d
        object.__setattr__(conv, "norm", norm)  # a plain reference, not a submodule: no second state-dict entry
        fused += 1
    return fused


def fold_batchnorm(backbone: ResNetBackbone) -> int:
    """Inference only: fold each BatchNorm (frozen, or trainable in eval mode) into the convolution before it
    (``conv(x) * s + t`` is one convolution with weight ``W * s`` and bias ``b * s + t``) and replace the norm
    by an identity, so that no elementwise pass over the features follows each convolution. In place; the
    weights keep their memory format. Returns how many norms were folded (GroupNorm is left alone). Same
    arithmetic up to float rounding (tests); the backbone must not be trained afterwards."""
    folded = 0
    for parent, name, conv, norm in list(_conv_norm_pairs(backbone)):
        if isinstance(norm, nn.BatchNorm2d) and norm.training:
            raise ValueError("fold_batchnorm: BatchNorm in training mode (call .eval() first)")
        with torch.no_grad():
            scale, shift = _scale_and_shift(norm)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            nhwc = conv.weight.is_contiguous(memory_format=torch.channels_last)
            weight = conv.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in, k, k): one scale per output
            weight = weight.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
            if isinstance(conv, FrozenBNConv2d):  # its norm becomes part of the weights now
                conv.__class__ = nn.Conv2d
                del conv.__dict__["norm"]
            conv.weight = nn.Parameter(weight, requires_grad=False)
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
        setattr(parent, name, nn.Identity())
        folded += 1
    return folded
