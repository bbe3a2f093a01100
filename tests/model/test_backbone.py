import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from fpn.config import synthetic
from fpn.engine.device import cpu_bf16_support
from fpn.errors import UserError
from fpn.model import build_detector, uses_caffe_weights
from fpn.model.ops.frozen_bn import folded_conv_norm
from fpn.model.backbone import ResNetBackbone, build_backbone, fold_batchnorm
from fpn.model.ops.frozen_bn import plain_conv_norm


def _cfg(**model):
    cfg = synthetic()
    cfg.model.backbone_width = 64  # torchvision's ResNet, so weight files fit
    for k, v in model.items():
        setattr(cfg.runtime if k in vars(cfg.runtime) else cfg.model, k, v)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "size, expected",
    [
        ((600, 1000), [(150, 250), (75, 125), (38, 63), (19, 32), (10, 16)]),  # unpadded input
        ((608, 1024), [(152, 256), (76, 128), (38, 64), (19, 32), (10, 16)]),  # padded to a multiple of 32
    ],
)
def test_pyramid_sizes_for_a_voc_sized_input(size, expected):
    model = build_detector(_cfg(fpn_channels=16), num_classes=3)
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.zeros(1, 3, *size)))
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert all(f.shape[1] == 16 for f in feats)


def test_loads_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)  # includes fc.*, which is ignored
    backbone = build_backbone(_cfg(pretrained=str(path), norm="frozen_bn"))
    assert torch.equal(backbone.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert torch.equal(backbone.bn1.running_var, ref.bn1.running_var)
    ref.eval()
    backbone.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[-1], ref.layer4(ref.layer3(ref.layer2(ref.layer1(
            ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))))


@pytest.mark.slow
def test_bad_weight_files_are_user_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="corrupt.pth: not a readable PyTorch weight file") as info:
        build_backbone(_cfg(pretrained=str(corrupt)))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="missing.pth: pretrained weight file not found"):
        build_backbone(_cfg(pretrained=str(tmp_path / "missing.pth")))
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(UserError, match="r34.pth: weights do not match the backbone .*unexpected"):
        build_backbone(_cfg(pretrained=str(other)))  # res18 config
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    wrong = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong)
    with pytest.raises(UserError, match="wrong_shape.pth: weights do not fit"):
        build_backbone(_cfg(pretrained=str(wrong)))


def test_frozen_stages():
    backbone = build_backbone(_cfg(norm="bn", freeze_at=2))
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1", "bn1", "layer1", "layer2")) for n in frozen)
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith(("layer3", "layer4")))
    backbone.train()
    assert not backbone.layer2[0].bn1.training  # frozen BatchNorm keeps its statistics
    assert backbone.layer3[0].bn1.training
    assert all(p.requires_grad for p in build_backbone(_cfg(freeze_at=0)).parameters())
    default = build_backbone(_cfg(norm="frozen_bn", freeze_at=1))
    assert not default.layer1[0].conv1.weight.requires_grad and default.layer2[0].conv1.weight.requires_grad


def test_group_norm():
    backbone = build_backbone(_cfg(norm="gn"))
    assert isinstance(backbone.layer2[0].bn1, torch.nn.GroupNorm) and backbone.layer2[0].bn1.num_groups == 32


@pytest.mark.slow
def test_caffe_weights_put_the_stride_on_the_1x1_conv():
    cfg = _cfg(backbone="res50", pretrained="/somewhere/resnet101_caffe.pth")
    assert uses_caffe_weights(cfg)
    assert not uses_caffe_weights(_cfg(pretrained="imagenet"))
    backbone = build_backbone(cfg, load_weights=False)
    assert backbone.layer2[0].conv1.stride == (2, 2) and backbone.layer2[0].conv2.stride == (1, 1)
    plain = build_backbone(_cfg(backbone="res50"), load_weights=False)
    assert plain.layer2[0].conv1.stride == (1, 1) and plain.layer2[0].conv2.stride == (2, 2)
    with torch.no_grad():
        assert [tuple(c.shape[-2:]) for c in backbone(torch.zeros(1, 3, 96, 160))] == [(24, 40), (12, 20), (6, 10), (3, 5)]
    with pytest.raises(UserError, match="data.normalization=caffe"):
        build_detector(cfg, num_classes=3)  # checked before the (missing) file is read
    cfg.data.normalization = "caffe"
    with pytest.raises(UserError, match="resnet101_caffe.pth: pretrained weight file not found"):
        build_detector(cfg, num_classes=3)
    imagenet = _cfg(pretrained="imagenet")
    imagenet.data.normalization = "caffe"
    with pytest.raises(UserError, match="data.normalization=imagenet"):
        build_detector(imagenet, num_classes=3)
    # a checkpoint is loaded afterwards: the pretrained weights (and their normalisation) do not matter
    build_detector(imagenet, num_classes=3, load_pretrained=False)


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match="model.backbone"):
        build_backbone(_cfg(backbone="res99"))
    with pytest.raises(UserError, match="model.norm"):
        build_backbone(_cfg(norm="ln"))
    with pytest.raises(UserError, match="model.freeze_at"):
        build_backbone(_cfg(freeze_at=7))
    with pytest.raises(UserError, match="model.anchor_sizes"):
        build_detector(_cfg(anchor_sizes=(32, 64)), num_classes=3)


@pytest.mark.parametrize("backbone, width, channels", [("res18", 32, [32, 64, 128, 256]),
                                                       ("res50", 16, [64, 128, 256, 512])])
def test_narrow_backbone_keeps_depth_and_strides(backbone, width, channels):
    b = build_backbone(_cfg(backbone=backbone, backbone_width=width, pretrained="none"))
    reference = build_backbone(_cfg(backbone=backbone, backbone_width=64, pretrained="none"))
    assert b.out_channels == channels
    assert len(list(b.modules())) == len(list(reference.modules()))  # same blocks, only narrower
    with torch.no_grad():
        feats = b(torch.zeros(1, 3, 128, 192))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 128 // s, 192 // s) for c, s in zip(channels, (4, 8, 16, 32))]


def test_narrow_backbone_refuses_pretrained_weights():
    with pytest.raises(UserError, match="backbone_width=32: pretrained weights exist only for width 64"):
        build_backbone(_cfg(backbone_width=32, pretrained="imagenet"))
    with pytest.raises(UserError, match="model.backbone_width"):
        build_backbone(_cfg(backbone_width=4, pretrained="none"))


def _randomise_norms(backbone):
    for m in backbone.modules():  # non-trivial statistics and affine parameters
        if hasattr(m, "running_var"):
            m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
            m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
            m.weight.data.copy_(torch.rand_like(m.weight) + 0.5)
            m.bias.data.copy_(torch.randn_like(m.bias) * 0.1)
    return backbone


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_frozen_batchnorm_equals_the_plain_backbone_outputs_and_gradients(channels_last):
    """Training with frozen BatchNorm applied through the convolutions: the same outputs and gradients (input,
    trainable convolution weights), the same state dict, frozen stages still frozen."""
    torch.manual_seed(0)
    plain = _randomise_norms(ResNetBackbone(50, norm="frozen_bn", freeze_at=1, width=16))
    fused = ResNetBackbone(50, norm="frozen_bn", freeze_at=1, width=16, conv_norm=folded_conv_norm)
    assert list(fused.state_dict()) == list(plain.state_dict())
    fused.load_state_dict(plain.state_dict())
    assert [n for n, p in fused.named_parameters() if p.requires_grad] == [
        n for n, p in plain.named_parameters() if p.requires_grad]  # fmt: skip
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 3, 96, 128).contiguous(memory_format=layout)
    outputs, grads = [], []
    for model in (plain, fused):
        model.to(memory_format=layout).train()
        xi = x.clone().requires_grad_()
        out = model(xi)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in out)
        grads.append(torch.autograd.grad(loss, [xi, model.layer4[0].conv1.weight, model.layer2[0].downsample[0].weight,
                                                model.layer3[1].conv2.weight]))  # fmt: skip
        outputs.append(out)
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    twin = copy.deepcopy(fused)
    assert twin.layer1[0].conv_norm is folded_conv_norm and isinstance(twin.layer1[0].bn1, FrozenBatchNorm2d)


def _op_names(fn) -> list[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Names(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    names: list[str] = []
    with Names():
        fn()
    return names


def test_folded_frozen_stages_are_kept_until_their_weights_change():
    """A frozen stage is folded once and kept (outside the state dict): a later forward runs only the convolutions
    there; a checkpoint loaded, an in-place edit, another dtype or a forward under inference mode followed by
    training all recompute it, and the outputs stay the plain backbone's (fp32, within 1e-4 relative)."""
    torch.manual_seed(0)
    plain = _randomise_norms(ResNetBackbone(18, norm="frozen_bn", freeze_at=4, width=16))  # everything frozen
    fused = ResNetBackbone(18, norm="frozen_bn", freeze_at=4, width=16, conv_norm=folded_conv_norm)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)

    def check():
        for a, b in zip(fused(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())

    with torch.inference_mode():
        check()  # kept as inference tensors...
    check()  # ...recomputed for use outside inference mode (autograd refuses inference tensors)
    names = _op_names(lambda: fused(x))
    assert names.count("convolution") == 20 and "mul" not in names and "rsqrt" not in names  # nothing but the net
    assert list(fused.state_dict()) == list(plain.state_dict())  # nothing kept in checkpoints
    _randomise_norms(plain)  # new statistics, loaded in place: the folded weights follow
    fused.load_state_dict(plain.state_dict())
    check()
    with torch.no_grad():
        for model in (plain, fused):
            model.layer3[0].conv2.weight.mul_(-2.0)  # an in-place edit bumps the version counter
    check()
    fused.double(), plain.double()
    x = x.double()
    check()


def test_inference_folds_trainable_convolutions_until_a_step_changes_them():
    """Without gradients (evaluation during training, inference) trainable convolutions are folded and kept too;
    an optimiser step (an in-place update) makes the next evaluation fold the new weights."""
    torch.manual_seed(0)
    fused = _randomise_norms(ResNetBackbone(18, norm="frozen_bn", freeze_at=1, width=16, conv_norm=folded_conv_norm))
    plain = copy.deepcopy(fused)
    for module in plain.modules():
        if hasattr(module, "conv_norm"):
            module.conv_norm = plain_conv_norm
    x = torch.randn(1, 3, 64, 64)
    optimizer = torch.optim.SGD([p for p in fused.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        with torch.no_grad():
            fused(x)
            names = _op_names(lambda: fused(x))
            for a, b in zip(fused(x), plain(x)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
        assert names.count("convolution") == 20 and "mul" not in names
        assert "_fpn_folded" in vars(fused.layer4[0].conv1)  # an evaluation's copy of a trainable weight...
        optimizer.zero_grad()
        sum(f.sum() for f in fused(x)).backward()
        assert "_fpn_folded" not in vars(fused.layer4[0].conv1)  # ...dropped by the next training forward
        optimizer.step()
        plain.load_state_dict(fused.state_dict())


@pytest.mark.skipif(not cpu_bf16_support()[0], reason="bf16 autocast on this CPU is emulated (slow)")
def test_folded_frozen_stages_are_kept_cast_under_autocast():
    """Under bf16 autocast a frozen stage's folded weights are kept cast: no per-forward copy of them; a trainable
    convolution costs one product for its weight (its cast is autocast's)."""
    torch.manual_seed(0)
    fused = _randomise_norms(ResNetBackbone(18, norm="frozen_bn", freeze_at=1, width=16, conv_norm=folded_conv_norm))
    plain = ResNetBackbone(18, norm="frozen_bn", freeze_at=1, width=16)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused(x)
        names = _op_names(lambda: fused(x))
        for a, b in zip(fused(x), plain(x)):
            torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05 * b.abs().max().item())
    frozen_convs, trainable_convs = 5, 15  # stem + layer1 (2 blocks x 2), the rest
    assert names.count("convolution") == frozen_convs + trainable_convs
    assert names.count("mul") == trainable_convs  # W * scale
    assert names.count("_to_copy") == 1 + trainable_convs  # the input, each trainable W * scale


def test_build_backbone_fuses_frozen_batchnorm_unless_told_not_to():
    fused = build_backbone(_cfg(pretrained="none", norm="frozen_bn"), conv_norm=folded_conv_norm)
    assert fused.conv_norm is fused.layer1[0].conv_norm is folded_conv_norm
    plain = build_backbone(_cfg(pretrained="none", norm="frozen_bn"))
    assert all(m.conv_norm is plain_conv_norm for m in plain.modules() if hasattr(m, "conv_norm"))
    assert list(plain.state_dict()) == list(fused.state_dict())
    model = build_detector(_cfg(pretrained="none", norm="frozen_bn", fuse_frozen_bn=False), 3)
    assert model.backbone.layer2[0].conv_norm is plain_conv_norm


@pytest.mark.parametrize("norm, channels_last, fused", [("frozen_bn", False, False), ("frozen_bn", True, True),
                                                        ("bn", True, False)])
def test_fold_batchnorm_equals_the_plain_backbone(norm, channels_last, fused):
    torch.manual_seed(0)
    backbone = ResNetBackbone(50 if norm == "frozen_bn" else 18, norm=norm, freeze_at=1, width=16,
                              conv_norm=folded_conv_norm if fused else plain_conv_norm).eval()
    _randomise_norms(backbone)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=layout)
    x = torch.randn(1, 3, 96, 128).contiguous(memory_format=layout)
    with torch.no_grad():
        plain = backbone(x)
        norms = sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in backbone.modules())
        assert fold_batchnorm(backbone) == norms > 0
        folded = backbone(x)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in backbone.modules())
    assert backbone.layer1[0].conv_norm is plain_conv_norm
    assert backbone.layer1[0].conv1.weight.is_contiguous(memory_format=layout)
    for a, b in zip(folded, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(ResNetBackbone(18, norm="bn", freeze_at=0, width=16).train())


@pytest.mark.parametrize("depth", [18, 50])
def test_blocks_are_torchvisions_names_initialisation_and_arithmetic(depth):
    """The blocks written here hold torchvision's parameters and buffers under the same names, drawn the same
    from the same seed, and compute torchvision's C2..C5."""
    torch.manual_seed(0)
    ours = ResNetBackbone(depth, norm="frozen_bn", freeze_at=0)
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=FrozenBatchNorm2d)
    reference = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    assert list(ours.state_dict()) == list(reference)
    assert all(torch.equal(v, reference[k]) for k, v in ours.state_dict().items())
    _randomise_norms(ours)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        y = theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x))))
        for stage, c in zip(("layer1", "layer2", "layer3", "layer4"), ours(x)):
            y = getattr(theirs, stage)(y)
            assert torch.equal(c, y), stage
