import math

import torch

from fpn.model.box_coder import BoxCoder


def test_encode_exact_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), 10 x 20
    tgt = torch.tensor([[1.0, 2.0, 21.0, 22.0]])  # centre (11, 12), 20 x 20
    d = coder.encode(ref, tgt)
    torch.testing.assert_close(d, torch.tensor([[10 * 6 / 10, 10 * 2 / 20, 5 * math.log(2.0), 0.0]]))


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat([ref, ref + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    tgt = torch.rand(50, 2, generator=g) * 100
    tgt = torch.cat([tgt, tgt + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coder = BoxCoder(weights)
        torch.testing.assert_close(coder.decode(coder.encode(ref, tgt), ref), tgt, atol=1e-3, rtol=1e-5)


def test_huge_dw_is_clamped_to_finite_box():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e30]]), ref)
    assert torch.isfinite(out).all()
    # exp(log(1000/16)) * 16 = 1000 pixels wide and high, centred at (8, 8)
    torch.testing.assert_close(out, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))


def test_bf16_deltas_decode_in_fp32():
    coder = BoxCoder()
    out = coder.decode(torch.zeros(2, 4, dtype=torch.bfloat16), torch.tensor([[0.0, 0.0, 300.5, 400.25]] * 2))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 300.5, 400.25]] * 2))
