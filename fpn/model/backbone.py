"""ResNet backbone returning C2..C5 (strides 4, 8, 16, 32; layer4 keeps its stride 2).

Driven by ``cfg.model``:

* ``backbone``: res18 | res34 | res50 | res101 | res152 (torchvision ResNets);
* ``norm``: ``frozen_bn`` (affine BatchNorm with fixed statistics, for fine-tuning pretrained
  weights at small batch sizes), ``bn`` (trainable BatchNorm, for training from scratch), ``gn``
  (GroupNorm, 32 groups);
* the blocks are written here (torchvision's parameter names, caffe's stride placement and the narrow width as
  constructor arguments); each declares its (conv, norm) pairs and applies them through the ``conv_norm`` chosen
  at build (``fpn.model.ops``: with ``fuse_frozen_bn`` a frozen BatchNorm goes through its convolution's weight
  and bias, not as a pass over the output);
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

from fpn.config import BACKBONES, Config
from fpn.errors import UserError
from fpn.model.ops.frozen_bn import fold_into_conv, plain_conv_norm

DEPTHS = {name: int(name.removeprefix("res")) for name in BACKBONES}
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


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """torchvision's conv1x1 / conv3x3: no bias, padding kernel // 2."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (res18/34), same parameter names; each (conv, norm) pair applied by
    ``conv_norm`` (``fpn.model.ops.frozen_bn``), declared in ``PAIRS``."""

    expansion = 1
    PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1"))

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Sequential | None, norm_layer,
                 conv_norm=plain_conv_norm, caffe: bool = False):  # fmt: skip
        super().__init__()  # caffe: no 1x1 conv to move the stride to, unchanged
        self.conv1 = _conv(c_in, planes, 3, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.conv_norm = conv_norm

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv_norm(self.conv1, self.bn1, x))
        out = self.conv_norm(self.conv2, self.bn2, out)
        return self.relu(out + _shortcut(self, x))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (res50+), same parameter names; the stride on the 3x3 conv2, or on the 1x1
    conv1 for caffe weights."""

    expansion = 4
    PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("downsample.0", "downsample.1"))

    def __init__(self, c_in: int, planes: int, stride: int, downsample: nn.Sequential | None, norm_layer,
                 conv_norm=plain_conv_norm, caffe: bool = False):  # fmt: skip
        super().__init__()
        self.conv1 = _conv(c_in, planes, 1, stride if caffe else 1)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv(planes, planes, 3, 1 if caffe else stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.conv_norm = conv_norm

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv_norm(self.conv1, self.bn1, x))
        out = self.relu(self.conv_norm(self.conv2, self.bn2, out))
        out = self.conv_norm(self.conv3, self.bn3, out)
        return self.relu(out + _shortcut(self, x))


def _shortcut(block: nn.Module, x: Tensor) -> Tensor:
    return x if block.downsample is None else block.conv_norm(block.downsample[0], block.downsample[1], x)


LAYERS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class ResNetBackbone(nn.Module):
    """Stem + layer1..layer4 of a torchvision ResNet with the same parameter and buffer names (so torchvision,
    ImageNet and caffe state dicts and fpn checkpoints load directly); ``forward`` returns [C2, C3, C4, C5].
    ``width``: the stage widths ``width * (1, 2, 4, 8)`` (torchvision: 64; 32 is a quarter of the compute, for
    training from scratch on small data; ImageNet weights exist only for 64). ``caffe``: caffe's stride placement
    (the bottleneck's 1x1 conv1) and stem max-pool (no padding, rounding up). ``conv_norm``: how each declared
    (conv, norm) pair is applied (``fpn.model.ops.frozen_bn``)."""

    PAIRS = (("conv1", "bn1"),)

    def __init__(self, depth: int, norm: str = "frozen_bn", freeze_at: int = 1, caffe: bool = False, width: int = 64,
                 conv_norm=plain_conv_norm):  # fmt: skip
        super().__init__()
        norm_layer = _norm_layer(norm)
        block = BasicBlock if depth < 50 else Bottleneck
        self.conv_norm = conv_norm
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True) if caffe
                        else nn.MaxPool2d(kernel_size=3, stride=2, padding=1))  # fmt: skip
        c_in = width
        for i, (stage, blocks) in enumerate(zip(STAGES, LAYERS[depth])):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or c_in != planes * block.expansion:  # made before the block, as torchvision does
                downsample = nn.Sequential(_conv(c_in, planes * block.expansion, 1, stride),
                                           norm_layer(planes * block.expansion))  # fmt: skip
            layer = [block(c_in, planes, stride, downsample, norm_layer, conv_norm, caffe)]
            c_in = planes * block.expansion
            layer += [block(c_in, planes, 1, None, norm_layer, conv_norm, caffe) for _ in range(1, blocks)]
            setattr(self, stage, nn.Sequential(*layer))
        if width == 64:  # torchvision's classifier, dropped: made only so that the random initialisation (weights
            nn.Linear(c_in, 1000)  # trained from scratch) draws the same numbers as torchvision's ResNet
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = [width * block.expansion * 2**i for i in range(4)]
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
        x = self.maxpool(self.relu(self.conv_norm(self.conv1, self.bn1, x)))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def conv_norm_pairs(self):
        """(module, conv name, norm name) of every declared pair, names relative to the module."""
        for module in self.modules():
            for conv, norm in getattr(module, "PAIRS", ()):
                if conv.startswith("downsample") and getattr(module, "downsample", None) is None:
                    continue
                yield module, conv, norm


def build_backbone(cfg: Config, load_weights: bool = True, *, conv_norm=plain_conv_norm) -> ResNetBackbone:
    """The backbone ``cfg.model`` describes; ``load_weights=False`` skips ``cfg.model.pretrained``
    (the architecture, caffe or not, still follows it) for when a checkpoint is loaded afterwards."""
    m = cfg.model
    m.validate()
    if m.backbone_width != 64 and load_weights and m.pretrained != "none":
        raise UserError(f"model.backbone_width={m.backbone_width}: pretrained weights exist only for width 64; "
                        "set model.pretrained=none")
    caffe = uses_caffe_weights(cfg)
    backbone = ResNetBackbone(DEPTHS[m.backbone], m.norm, m.freeze_at, caffe=caffe, width=m.backbone_width,
                              conv_norm=conv_norm)
    if load_weights and m.pretrained != "none":
        if m.pretrained == "imagenet":
            state, source = _imagenet_state_dict(m.backbone), f"torchvision ImageNet weights for {m.backbone}"
        else:
            state, source = read_state_dict(m.pretrained), m.pretrained
        load_backbone_weights(backbone, state, source, drop_bn_stats=m.norm == "gn")
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


def fold_batchnorm(backbone: ResNetBackbone) -> int:
    """Inference only: fold each BatchNorm (frozen, or trainable in eval mode) into the convolution of its
    declared pair (``conv(x) * s + t`` is one convolution with weight ``W * s`` and bias ``b * s + t``) and
    replace the norm by an identity, so that no elementwise pass over the features follows each convolution. In
    place; the weights keep their memory format; the pairs are then applied plainly. Returns how many norms were
    folded (GroupNorm is left alone). Same arithmetic up to float rounding (tests); the backbone must not be
    trained afterwards."""
    folded = 0
    for module, conv_name, norm_name in list(backbone.conv_norm_pairs()):
        norm = module.get_submodule(norm_name)
        if not isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            continue
        fold_into_conv(module.get_submodule(conv_name), norm)
        owner, _, name = norm_name.rpartition(".")
        setattr(module.get_submodule(owner), name, nn.Identity())
        folded += 1
    for module in backbone.modules():
        if hasattr(module, "conv_norm"):
            module.conv_norm = plain_conv_norm
    return folded
