"""``choose_ops``: the one place that maps device, purpose, the config's choices and Triton to implementations."""

import warnings

import pytest

import fpn.model.ops.nms as nms_module
from fpn.model.ops import NMS_CHOICES, POOL_CHOICES, choose_ops
from fpn.model.ops.frozen_bn import folded_conv_norm, plain_conv_norm
from fpn.model.ops.nms import BatchedNMS, OffsetNMS, ThreadedNMS, TritonNMS
from fpn.model.ops.roi_pool import by_mask_roi_align, packed_roi_align, sparse_roi_align


def test_auto_rules_by_device_and_purpose():
    cpu = choose_ops("cpu", "train")
    assert (type(cpu.proposal_nms), type(cpu.detection_nms), cpu.pool) == (ThreadedNMS, BatchedNMS, sparse_roi_align)
    assert cpu.conv_norm is folded_conv_norm and cpu.cache_anchors and cpu.stable_sort
    cuda = choose_ops("cuda", "train", triton=True)
    assert isinstance(cuda.proposal_nms, TritonNMS) and isinstance(cuda.detection_nms, TritonNMS)
    assert cuda.pool is packed_roi_align
    plain = choose_ops("cuda", "infer", triton=False, fuse_frozen_bn=False)
    assert type(plain.proposal_nms) is OffsetNMS and not plain.proposal_nms.gather_valid
    assert plain.detection_nms.gather_valid and plain.conv_norm is plain_conv_norm
    exported = choose_ops("cuda", "export", nms="segment", pool="sparse", compile="inductor")
    assert exported.proposal_nms.max_boxes is None and exported.detection_nms.max_boxes is None
    assert exported.pool is by_mask_roi_align and exported.compile_backend == ""
    assert not exported.cache_anchors and not exported.stable_sort
    compiled = choose_ops("cpu", compile="aot_eager")
    assert compiled.compile_backend == "aot_eager" and not compiled.cache_anchors  # one graph per input shape
    assert type(choose_ops("cpu", nms="offset").proposal_nms) is OffsetNMS
    assert "by_mask" in POOL_CHOICES and NMS_CHOICES[0] == "auto"
    with pytest.raises(ValueError, match="purpose must be one of train, infer, export"):
        choose_ops("cpu", "serve")
    with pytest.raises(ValueError, match="nms must be one of auto, segment, offset, mask"):
        choose_ops("cpu", nms="cuda")


def test_a_kernel_that_cannot_run_is_said_once_and_the_plain_variant_chosen(monkeypatch):
    """A Triton toolchain problem on the user's machine costs speed, not the run: found when the ops are chosen
    (the kernel compiled and run once), one warning, then the plain variant."""
    pytest.importorskip("triton")
    import fpn.model.ops.triton_nms

    def broken(*args):
        raise RuntimeError("PTX assembly failed\nmore lines")

    monkeypatch.setattr(fpn.model.ops.triton_nms, "nms_sorted_groups", broken)
    nms_module.triton_problem.cache_clear()
    try:
        # (PTX assembly failed, or on a machine without CUDA its own reason)
        with pytest.warns(RuntimeWarning, match=r"Triton NMS kernel cannot run here \(\w+: .+\); using"):
            ops = choose_ops("cuda", "train")
        assert type(ops.proposal_nms) is OffsetNMS and type(ops.detection_nms) is OffsetNMS
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert type(choose_ops("cuda", "infer").proposal_nms) is OffsetNMS  # not tried, nor said, again
    finally:
        nms_module.triton_problem.cache_clear()
