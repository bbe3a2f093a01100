"""A convolution followed by a norm: applied as two passes, or, for a frozen BatchNorm, as one convolution.

The ResNet blocks (``fpn.model.backbone``) declare their (convolution, norm) pairs and apply each through the
``conv_norm`` chosen when the model is built (``fpn.model.ops.choose_ops``):

* ``plain_conv_norm``: ``norm(conv(x))``, the reference;
* ``folded_conv_norm``: a frozen BatchNorm applied through the convolution's weight and bias, formed in every forward
  from the current values (``W * scale``, ``b * scale + shift``): a weight-sized product instead of an
  activation-sized pass over the output. The weight's gradient is the chain rule's ``dL/dW' * scale``, as unfolded
  (tests compare outputs and gradients with ``plain_conv_norm``).

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


def folded_conv_norm(conv: nn.Conv2d, norm: nn.Module, x: Tensor) -> Tensor:
    if not isinstance(norm, FrozenBatchNorm2d):  # trainable BatchNorm, GroupNorm, or already folded (Identity)
        return norm(conv(x))
    scale, shift = scale_and_shift(norm)
    weight = conv.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in, k, k): one scale per output channel
    bias = shift if conv.bias is None else conv.bias * scale + shift
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
