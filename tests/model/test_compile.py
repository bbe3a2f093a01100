"""The training forward + losses and the inference batch trace into one graph (torch.compile fullgraph=True), and
the compiled model computes what the eager one does. The ops a compiled run chooses (``choose_ops(compile=...)``:
opaque custom ops around what has data-dependent sizes) give the eager choice's exact results."""

import pytest
import torch
import torch._dynamo as dynamo

from detector_helpers import branch_ops, rectangles_batch, triton_runs_on
from tiny_model import tiny_config
from fpn.model import build_detector
from fpn.model.ops import choose_ops
from fpn.model.ops.nms import BatchedNMS, OpaqueNMS, ThreadedNMS, TritonNMS
from fpn.model.ops.roi_pool import opaque_sparse_roi_align, sparse_roi_align
from fpn.structures import pad_targets


def _model(ops, seed=0):
    torch.manual_seed(seed)
    return build_detector(tiny_config(), num_classes=4, ops=ops)


def _inputs():
    images, targets = rectangles_batch()
    sizes = torch.tensor([[128.0, 128.0], [100.0, 120.0]])  # (N, 2) (h, w): a tensor, never read on the host
    return images, sizes, pad_targets(targets, "cpu")


def _eager(ops):
    """The same choice, not compiled (the model compiles nothing itself)."""
    return type(ops)(**{**ops.__dict__, "compile_backend": ""})


def test_compile_chooses_opaque_ops_with_the_same_results():
    ops = choose_ops("cpu", "train", compile="aot_eager", sampling_ratio=2)
    assert isinstance(ops.proposal_nms, OpaqueNMS) and isinstance(ops.proposal_nms.inner, ThreadedNMS)
    assert isinstance(ops.detection_nms, OpaqueNMS) and isinstance(ops.detection_nms.inner, BatchedNMS)
    assert ops.pool is opaque_sparse_roi_align and ops.compile_backend == "aot_eager"
    plain = choose_ops("cpu", "train", sampling_ratio=2)
    assert plain.pool is sparse_roi_align and isinstance(plain.proposal_nms, ThreadedNMS)
    cuda = choose_ops("cuda", "train", compile="inductor", triton=True)
    assert isinstance(cuda.proposal_nms, TritonNMS) and isinstance(cuda.proposal_nms.fallback, OpaqueNMS)

    images, sizes, gt = _inputs()
    opaque, reference = _model(_eager(ops)).train(), _model(plain).train()
    torch.manual_seed(1)
    a = opaque.losses(images, sizes, gt)
    torch.manual_seed(1)
    b = reference.losses(images, sizes, gt)
    assert all(torch.equal(a[k], b[k]) for k in b)
    sum(a.values()).backward()
    sum(b.values()).backward()
    grads = [(p.grad, q.grad) for p, q in zip(opaque.parameters(), reference.parameters()) if q.grad is not None]
    assert grads and all(torch.equal(g, h) for g, h in grads)  # the opaque pooler's own backward, bit for bit
    with torch.no_grad():
        found_a, found_b = opaque.eval().detect_padded(images, sizes), reference.eval().detect_padded(images, sizes)
    assert found_b[3].any() and all(torch.equal(x, y) for x, y in zip(found_a, found_b))


def _breaks(fn, *args) -> list[str]:
    dynamo.reset()
    explained = dynamo.explain(fn)(*args)
    return [f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}"
            for b in explained.break_reasons]  # fmt: skip


@pytest.mark.slow
def test_cuda_branches_trace_without_graph_breaks():
    """CUDA's ops (packed pooler, Triton keep masks, in Triton's interpreter here) as one graph each, training and
    inference (the CPU's: ``test_fullgraph_compiled_step_and_inference_equal_eager``, where fullgraph=True would
    raise at a break)."""
    if not triton_runs_on(torch.device("cpu")):
        pytest.skip("the CUDA branches need Triton (TRITON_INTERPRET=1 on a CPU)")
    images, sizes, gt = _inputs()
    model = _model(_eager(branch_ops(True, compile="aot_eager"))).train()
    assert _breaks(model.losses, images, sizes, gt) == []
    with torch.no_grad():
        assert _breaks(model.eval().detect_padded, images, sizes) == []


@pytest.mark.slow
def test_fullgraph_compiled_step_and_inference_equal_eager():
    """aot_eager (the graph torch.compile hands a backend, run by eager kernels), fullgraph=True (a graph break
    raises): losses and detections equal the eager model's exactly; gradients to rounding (the compiled backward
    sums the contributions to a shared layer, e.g. the RPN head over five levels, in its own order)."""
    ops = _eager(choose_ops("cpu", "train", compile="aot_eager", sampling_ratio=2))
    images, sizes, gt = _inputs()
    model = _model(ops).train()
    dynamo.reset()
    torch.manual_seed(1)  # the samplers draw from the global generator: the same draws in both
    eager = model.losses(images, sizes, gt)
    sum(eager.values()).backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model.losses, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    losses = compiled(images, sizes, gt)
    sum(losses.values()).backward()
    assert set(losses) == set(eager) and all(torch.equal(losses[k], eager[k]) for k in eager)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(eager_grads)
    for g, h in zip(grads, eager_grads):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)

    model.eval()
    with torch.no_grad():
        eager = model.detect_padded(images, sizes, sizes * 2)
        out = torch.compile(model.detect_padded, backend="aot_eager", fullgraph=True)(images, sizes, sizes * 2)
    assert eager[3].sum() > 0 and all(torch.equal(a, b) for a, b in zip(out, eager))
