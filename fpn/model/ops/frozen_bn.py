"""A convolution followed by a norm: applied as two passes, or, for a frozen BatchNorm, as one convolution.

The ResNet blocks (``fpn.model.backbone``) declare their (convolution, norm) pairs and apply each through the
``conv_norm`` chosen when the model is built (``fpn.model.ops.choose_ops``):

* ``plain_conv_norm``: ``norm(conv(x))``, the reference;
* ``folded_conv_norm``: a frozen BatchNorm applied through the convolution's weight and bias (``W * scale``,
  ``b * scale + shift``): no activation-sized pass over the output. What does not train is computed once and kept
  (``_memo``), not in every forward: a frozen BatchNorm's ``scale, shift`` never change, so a trainable convolution
  costs one product ``W * scale`` per forward (and its gradient ``dL/dW' * scale`` backward, as unfolded); a frozen
  convolution (a frozen stage: its weight does not train either), and every one where no gradient is taken
  (inference: until an optimiser step changes the weight), is folded whole, and under autocast also kept cast, so
  it costs no operation besides the convolution. Before this, each pair cost ~6 small operations
  per forward (``rsqrt``, products, the casts autocast makes of frozen weights): ~600 kernel launches per R101
  forward on a GPU (docs/PERFORMANCE.md, "Issue 28"). Tests compare outputs and gradients with ``plain_conv_norm``.

The kept values live beside the module (not in its state dict: checkpoints hold the unfolded, torchvision-named
weights and statistics, and load into either form); each is recomputed when a value it came from changes (a
checkpoint loaded, ``.to()`` another device or dtype, an in-place edit: the tensors' storage and version counter
say so), and when one made in ``torch.inference_mode`` would be used outside it. Under ``torch.compile`` the
product is formed in the graph, where the compiler folds it.

``fold_into_conv`` folds a BatchNorm into its convolution for good (inference: ``fold_batchnorm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d


def scale_and_shift(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """The per-channel affine map a BatchNorm in eval mode applies: x * scale + shift, each (C,)."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    return scale, norm.bias - norm.running_mean * scale


def plain_conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    return norm(conv(x))


def _state(tensors) -> tuple:
    """What identifies the current values of ``tensors``: each one's storage (held, so that its address cannot
    be reused while compared), offset and version counter (bumped by every in-place write: ``load_state_dict``)."""
    return tuple((t.untyped_storage(), t.storage_offset(), t._version, t.dtype) for t in tensors)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(s1.data_ptr() == s2.data_ptr() and s1.device == s2.device and rest1 == rest2
                                    for (s1, *rest1), (s2, *rest2) in zip(a, b))  # fmt: skip


def _memo(owner: nn.Module, name: str, sources: tuple, make, variant=None):
    """``make()`` (no autograd) for the current values of ``sources`` and ``variant`` (e.g. the autocast dtype),
    computed once and kept on ``owner`` (outside its state dict) until one of them changes."""
    kept = owner.__dict__.get(name)
    inference = torch.is_inference_mode_enabled()
    if kept is not None and kept[1] == variant and (inference or not kept[2]) and _same(kept[0], _state(sources)):
        return kept[3]
    with torch.no_grad():
        value = make()
    owner.__dict__[name] = (_state(sources), variant, inference, value)  # inference tensors: inference mode only
    return value


def _norm_tensors(norm: nn.Module) -> tuple:
    return norm.weight, norm.bias, norm.running_mean, norm.running_var


def folded_conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    if not isinstance(norm, FrozenBatchNorm2d):  # trainable BatchNorm, GroupNorm, or already folded (Identity)
        return norm(conv(x))
    if torch.compiler.is_compiling():  # a traced graph: the arithmetic, for the compiler to fold
        scale, shift = scale_and_shift(norm)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        return conv._conv_forward(x, weight, shift if conv.bias is None else conv.bias * scale + shift)
    cast = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    trains = torch.is_grad_enabled() and (conv.weight.requires_grad or (conv.bias is not None and conv.bias.requires_grad))
    if not trains:  # a frozen stage, or inference: folded once per set of weights (an optimiser step makes a new one)
        sources = (conv.weight, *(() if conv.bias is None else (conv.bias,)), *_norm_tensors(norm))

        def fold():
            scale, shift = scale_and_shift(norm)
            weight = conv.weight * scale.view(-1, 1, 1, 1)  # keeps the weight's memory format
            bias = shift if conv.bias is None else conv.bias * scale + shift
            return (weight, bias) if cast is None else (weight.to(cast), bias.to(cast))  # autocast finds them cast

        weight, bias = _memo(conv, "_fpn_folded", sources, fold, cast)
        return conv._conv_forward(x, weight, bias)
    conv.__dict__.pop("_fpn_folded", None)  # training: an evaluation's folded copy is stale, free its memory

    def affine():
        scale, shift = scale_and_shift(norm)
        return scale.view(-1, 1, 1, 1), shift if cast is None else shift.to(cast)

    scale, shift = _memo(norm, "_fpn_scale_shift", _norm_tensors(norm), affine, cast)
    weight = conv.weight * scale  # (C_out, C_in, k, k) * (C_out, 1, 1, 1): the one operation, and its gradient
    bias = shift if conv.bias is None else conv.bias * scale.view(-1) + shift
    return conv._conv_forward(x, weight, bias)


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """``conv`` then ``norm`` (a BatchNorm, frozen or in eval mode) as one convolution: weight ``W * s``, bias
    ``b * s + t``, the weight's memory format kept. The caller replaces the norm by an identity."""
    if isinstance(norm, nn.BatchNorm2d) and norm.training:
        raise ValueError("fold_batchnorm: BatchNorm in training mode (call .eval() first)")
    scale, shift = scale_and_shift(norm)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    nhwc = conv.weight.is_contiguous(memory_format=torch.channels_last)
    weight = conv.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in, k, k): one scale per output
    weight = weight.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
