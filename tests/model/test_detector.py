import pytest
import torch
from torchvision.ops import box_iou

import copy
import pickle
import warnings

from detector_helpers import branch_ops, rectangles_batch, triton_runs_on
from fpn.errors import UserError
from fpn.model import FPNDetector, build_detector, for_inference
from fpn.model.ops.nms import BatchedNMS, OffsetNMS, ThreadedNMS, TritonNMS
from fpn.model.ops.roi_pool import by_mask_roi_align, packed_roi_align, sparse_roi_align

LOSS_KEYS = {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}


def _empty(n):
    return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in range(n)]


def test_build_detector_returns_module(small_cfg):
    model = build_detector(small_cfg, num_classes=4)
    assert isinstance(model, FPNDetector)
    assert model.roi_heads.box_head.cls_score.out_features == 4
    assert model.roi_heads.box_head.bbox_pred.out_features == 16
    small_cfg.model.class_agnostic = True
    assert build_detector(small_cfg, num_classes=4).roi_heads.box_head.bbox_pred.out_features == 4


@pytest.mark.parametrize("mixed", [False, True])
def test_images_without_objects_give_finite_losses_and_gradients(small_cfg, mixed):
    model = build_detector(small_cfg, num_classes=4).train()
    images = torch.randn(2, 3, 64, 96)
    targets = _empty(2)
    if mixed:
        targets[1] = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2])}
    losses = model(images, [(64, 96), (60, 80)], targets)
    assert set(losses) == LOSS_KEYS
    assert all(v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    if not mixed:
        assert losses["rpn_box"].item() == 0.0 and losses["rcnn_box"].item() == 0.0
    assert losses["rpn_cls"] > 0 and losses["rcnn_cls"] > 0
    sum(losses.values()).backward()
    for p in (model.rpn.head.objectness.weight, model.roi_heads.box_head.cls_score.weight, model.backbone.layer4[0].conv1.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_autocast_bf16_on_cpu_both_modes(small_cfg):
    model = build_detector(small_cfg, num_classes=4)
    images, targets = rectangles_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, None, targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        with torch.no_grad():
            out = model.eval()(images, None)
    assert len(out) == 2 and all(o["boxes"].dtype == torch.float32 and o["labels"].dtype == torch.int64 for o in out)


def test_list_input_is_padded_and_sizes_inferred(small_cfg):
    model = build_detector(small_cfg, num_classes=4).eval()
    a, b = torch.randn(3, 60, 70), torch.randn(3, 50, 90)
    padded = torch.zeros(2, 3, 64, 96)
    padded[0, :, :60, :70], padded[1, :, :50, :90] = a, b
    with torch.no_grad():
        from_list = model([a, b])
        from_batch = model(padded, [(60, 70), (50, 90)])
        scaled = model(padded, [(60, 70), (50, 90)], original_sizes=[(120, 210), (50, 90)])
    for x, y in zip(from_list, from_batch):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(x[k], y[k])
    assert from_list[0]["boxes"].shape[0] > 0  # untrained, but score_thresh 0.05 < 1/4
    assert (from_list[0]["boxes"][:, 2] <= 70).all() and (from_list[1]["boxes"][:, 3] <= 50).all()
    torch.testing.assert_close(scaled[0]["boxes"], from_batch[0]["boxes"] * torch.tensor([3.0, 2.0, 3.0, 2.0]))
    torch.testing.assert_close(scaled[1]["boxes"], from_batch[1]["boxes"])


@pytest.mark.slow
def test_overfits_one_batch(small_cfg):
    """A small model learns one batch of rectangles: the loss collapses and eval finds every object."""
    torch.manual_seed(0)
    model = build_detector(small_cfg, num_classes=4).train()
    images, targets = rectangles_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(70):
        loss = sum(model(images, None, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    with torch.no_grad():
        outputs = model.eval()(images, None)
    assert history[0] > 1.5 and sum(history[-5:]) / 5 < 0.2 * history[0]  # about 0.1 x start in practice
    for out, t in zip(outputs, targets):
        confident = out["scores"] > 0.5
        iou = box_iou(t["boxes"], out["boxes"][confident])  # (objects, detections)
        hit = (iou > 0.5) & (t["labels"].unsqueeze(1) == out["labels"][confident].unsqueeze(0))
        assert hit.any(dim=1).all(), (iou, out["labels"][confident])


def test_training_after_inference_mode_evaluation(small_cfg):
    """Evaluation under torch.inference_mode() must not leave cached tensors that break training."""
    model = build_detector(small_cfg, num_classes=4)
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model.eval()(images, None)
    losses = model.train()(images, None, [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert model.rpn.head.conv.weight.grad is not None


def test_training_needs_targets(small_cfg):
    model = build_detector(small_cfg, num_classes=4).train()
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 3, 64, 64), None)


@pytest.mark.slow
def test_channels_last_is_a_layout_only(small_cfg):
    """The same weights give the same losses, gradients and detections in either memory layout. In
    float64: in float32 the two layouts round differently, and one ReLU input within rounding of 0
    switching sides changes the backbone's gradients by a few percent (seen in this very test)."""
    small_cfg.runtime.channels_last = True
    nhwc = build_detector(small_cfg, num_classes=4).double()
    small_cfg.runtime.channels_last = False
    nchw = build_detector(small_cfg, num_classes=4).double()
    nchw.load_state_dict(nhwc.state_dict())
    conv = nhwc.backbone.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nchw.backbone.layer1[0].conv1.weight.is_contiguous()
    images, targets = rectangles_batch()
    images = images.double()
    losses = []
    for model in (nhwc, nchw):
        torch.manual_seed(1)  # same anchor and RoI sampling
        losses.append(model.train()(images, None, targets))
        sum(losses[-1].values()).backward()
    for key in LOSS_KEYS:
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=1e-6, atol=1e-8)
    for (name, a), b in zip(nhwc.named_parameters(), nchw.parameters()):
        if b.grad is not None:
            assert (a.grad - b.grad).norm() <= 1e-9 * b.grad.norm() + 1e-12, name
    with torch.no_grad():
        (a,), (b,) = nhwc.eval()(images[:1], None), nchw.eval()(images[:1], None)
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    assert torch.equal(a["labels"], b["labels"]) and len(a["labels"]) > 0


@pytest.mark.slow
def test_cuda_branches_equal_the_cpu_branches(small_cfg, device):
    """Both branches chosen for the device at hand: a CUDA-only branch runs in a CPU test, and on a GPU the CPU
    one runs there too. Same losses and gradients in training, same detections at test time."""
    if not triton_runs_on(device):
        pytest.skip("the CUDA branches need Triton (on a CPU: its interpreter, TRITON_INTERPRET=1)")
    images, targets = rectangles_batch()
    images, targets = images.to(device), [{k: v.to(device) for k, v in t.items()} for t in targets]
    state, runs = None, []
    for cuda_branches in (False, True):
        torch.manual_seed(0)
        model = build_detector(small_cfg, 4, load_pretrained=False, ops=branch_ops(cuda_branches, device)).to(device)
        state = state or {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        torch.manual_seed(1)  # the same anchor and RoI samples
        losses = model.train()(images, None, targets)
        grads = torch.autograd.grad(sum(losses.values()), [model.roi_heads.box_head.fc1.weight,
                                                           model.backbone.layer4[0].conv1.weight])
        with torch.no_grad():
            detections = model.eval()(images, None)
        runs.append((losses, grads, detections))
    (losses_cpu, grads_cpu, dets_cpu), (losses_cuda, grads_cuda, dets_cuda) = runs
    for k in LOSS_KEYS:
        torch.testing.assert_close(losses_cuda[k], losses_cpu[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert sum(len(d["labels"]) for d in dets_cpu) > 0
    for a, b in zip(dets_cuda, dets_cpu):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)


def test_for_inference_gives_the_same_detections(small_cfg):
    """The inference copy (BatchNorms folded into the convolutions, channels-last) equals the plain model; the
    original is left untouched."""
    torch.manual_seed(0)
    small_cfg.runtime.channels_last = False
    model = build_detector(small_cfg, num_classes=4).train()
    images, targets = rectangles_batch()
    model(images, None, targets)  # one step's worth of BatchNorm statistics (train mode)
    model.eval()
    fast = for_inference(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) == 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    assert fast.backbone.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        plain_out, fast_out = model(images, None), fast(images, None)
    for a, b in zip(plain_out, fast_out):
        assert a["labels"].tolist() == b["labels"].tolist() and len(a["labels"]) > 0
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_equals_eager_and_stays_out_of_copies(small_cfg):
    """``runtime.compile``: the training forward + losses and the inference batch through torch.compile, one graph
    each (here its ``aot_eager`` backend, which traces and splits forward and backward as inductor does, without
    inductor's minutes of C++ compilation on a CPU): the same losses and gradients as a separately built eager
    model with the same weights; a copy (deep copy, pickle, ``for_inference``) compiles its own, equal to the eager
    model's inference copy, never the original's."""
    torch.manual_seed(0)
    small_cfg.runtime.compile = "aot_eager"
    compiled = build_detector(small_cfg, num_classes=4, load_pretrained=False)
    assert compiled.compile_fullgraph  # the CPU's ops trace without graph breaks
    small_cfg.runtime.compile = ""
    eager = build_detector(small_cfg, num_classes=4, load_pretrained=False)
    eager.load_state_dict(compiled.state_dict())
    images, targets = rectangles_batch()
    results = []
    for model in (eager, compiled):
        torch.manual_seed(1)
        losses = model.train()(images, None, targets)
        grads = torch.autograd.grad(sum(losses.values()), [model.backbone.layer1[0].conv1.weight,
                                                           model.neck.output[0].weight])
        results.append((losses, grads))
    (losses_eager, grads_eager), (losses_compiled, grads_compiled) = results
    for k in LOSS_KEYS:
        torch.testing.assert_close(losses_compiled[k], losses_eager[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert eager._compiled is None and compiled._compiled is not None
    for twin in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled)), for_inference(compiled)):
        # each copy compiles its own: never the original's functions, bound to the original's weights
        assert twin._compiled is not None and twin._compiled["detect"] is not compiled._compiled["detect"]
    fast_eager = for_inference(eager)
    sizes = torch.tensor([[128.0, 128.0]] * 2)
    with torch.no_grad():
        for m in (twin, fast_eager):  # if the copy ran the original's compiled code, it would not see this
            m.backbone.conv1.weight.zero_()
        scores = twin.detect_padded(images, sizes)[1]
        torch.testing.assert_close(scores, fast_eager.detect_padded(images, sizes)[1], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(scores, compiled.eval().detect_padded(images, sizes)[1], atol=1e-3)
        from_forward = twin(images)  # eval forward: the compiled tables, compacted
        assert [len(d["scores"]) for d in from_forward] == twin.detect_padded(images, sizes)[3].sum(1).tolist()
    small_cfg.runtime.compile = "aot_eager"
    assert build_detector(small_cfg, 4, load_pretrained=False, purpose="export")._compiled is None
    small_cfg.runtime.pool_impl = "torchvision"  # reads its counts on the host: compiled with graph breaks
    assert not build_detector(small_cfg, 4, load_pretrained=False).compile_fullgraph


def test_implementation_fields_pick_the_paths_and_refuse_bad_values(small_cfg):
    small_cfg.runtime.pool_impl, small_cfg.runtime.nms_impl = "packed", "mask"
    model = build_detector(small_cfg, num_classes=4, load_pretrained=False)
    rpn, post = model.rpn, model.roi_heads.postprocessor
    # a CPU, so no Triton kernel: the plain variant of the keep mask
    assert (model.roi_heads.pooler.pool, type(rpn.nms), type(post.nms)) == (packed_roi_align, OffsetNMS, BatchedNMS)
    small_cfg.runtime.pool_impl, small_cfg.runtime.nms_impl = "auto", "auto"
    model = build_detector(small_cfg, 4, load_pretrained=False)
    assert (model.roi_heads.pooler.pool, type(model.rpn.nms)) == (sparse_roi_align, ThreadedNMS)
    exported = build_detector(small_cfg, 4, load_pretrained=False, purpose="export")
    assert exported.roi_heads.pooler.pool is by_mask_roi_align and exported.rpn.anchor_generator.cache is None
    with warnings.catch_warnings():  # without CUDA: the Triton kernel cannot run, said once
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = for_inference(model, "cuda", "infer")  # ops for another device, chosen from the model's choices
    assert fast.roi_heads.pooler.pool is packed_roi_align and isinstance(fast.rpn.nms, (TritonNMS, OffsetNMS))
    assert type(for_inference(model).rpn.nms) is ThreadedNMS
    for key, value, message in [("pool_impl", "fast", "runtime.pool_impl: must be one of auto, torchvision"),
                                ("nms_impl", "cuda", "runtime.nms_impl: must be one of auto, segment")]:
        small_cfg.runtime.pool_impl, small_cfg.runtime.nms_impl = "packed", "auto"
        setattr(small_cfg.runtime if key in vars(small_cfg.runtime) else small_cfg.model, key, value)
        with pytest.raises(UserError, match=message):
            build_detector(small_cfg, num_classes=4, load_pretrained=False)


@pytest.mark.slow
def test_detect_to_host_waits_only_for_its_one_copy(device):
    """With the CUDA branches (here in Triton's interpreter on a CPU), the inference batch's fixed-shape tables
    come to the host in one copy and are compacted there: no read of the number of detections before it."""
    from tiny_model import small_config

    from fpn.perf.host_sync import count_host_syncs

    if not triton_runs_on(device):
        pytest.skip("the CUDA branches need Triton (on a CPU: its interpreter, TRITON_INTERPRET=1)")
    torch.manual_seed(0)
    model = build_detector(small_config(), 4, load_pretrained=False, ops=branch_ops(True, device=device))
    model = model.to(device).eval()
    images = rectangles_batch()[0].to(device)
    with torch.no_grad():
        flat = model(images, None)
    with count_host_syncs() as syncs:
        on_host = model.detect_to_host(images, None)
    assert syncs.total == 1 and all(".cpu()" in site for site in syncs.by_site), syncs.describe()
    assert sum(len(d["labels"]) for d in on_host) > 0
    for a, b in zip(flat, on_host):
        assert all(torch.equal(a[k].cpu(), b[k]) for k in ("boxes", "scores", "labels"))
