"""Parity with torchvision's Faster R-CNN: a converted model computes torchvision's detections, stage by stage.

torchvision models are built here with random weights (fixed seeds, no download): the architecture of
``fasterrcnn_resnet50_fpn`` (91 COCO slots) and a small custom ResNet-18 FPN. Both models see the same images through
their own preprocessing; each test compares one stage, so a failure names it: preprocessed input, backbone + FPN
features, RPN proposals, pooled RoI features (of the same proposals), final detections in original-image pixels.
"""

import re
from dataclasses import dataclass

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2

from fpn import config as C
from fpn.commands.test import build_model_from_checkpoint
from fpn.data.loader import build_test_loader
from fpn.data.transforms import read_image
from fpn.checkpoint import cyx_to_yxc
from fpn.errors import UserError
from fpn.interop import torchvision as tvi
from tv_models import CUSTOM_SLOTS, POST_NMS_TEST, as_torchvision_input, coco_res50, custom_res18, records_of, write_images

# detections: the tolerances; earlier stages: what the same arithmetic should give
BOX_TOL, SCORE_TOL = 1e-3, 1e-4
# two images in one batch (resized to 192 x 215 and 192 x 209, padded to 192 x 224: P5 has 7 columns, so torchvision's
# P6 anchors are 224 // 4 = 56 px apart across), and one the longer side limits (120 x 240, padded to 128 x 256)
SIZES = [(250, 280), (240, 262), (150, 300)]
MIN_SIZE, MAX_SIZE = 192, 240


@dataclass
class Stages:
    """One batch through both models: (ours, torchvision's) per stage."""

    input: tuple
    features: tuple
    proposals: tuple  # lists of (P_i, 4) boxes per image
    pooled: tuple  # (R, C, 7, 7) for torchvision's proposals
    detections: tuple  # lists of per-image dicts, original-image pixels


@torch.no_grad()
def run_both(tv_model, ckpt, paths) -> list[Stages]:
    """Each test-loader batch through both whole models (hooks keep the stages' outputs), and both RoI poolers
    on torchvision's proposals."""
    cfg = C.from_dict(ckpt["config"])
    ours = build_model_from_checkpoint(ckpt, "converted", cfg, torch.device("cpu"))
    seen = {}

    def keep(name):
        return lambda module, args, output: seen.__setitem__(name, output)

    hooks = [ours.neck.register_forward_hook(keep("features")), ours.rpn.register_forward_hook(keep("proposals")),
             tv_model.transform.register_forward_hook(keep("tv_input")),
             tv_model.backbone.register_forward_hook(keep("tv_features")),
             tv_model.rpn.register_forward_hook(keep("tv_proposals"))]  # fmt: skip
    runs = []
    try:
        for batch in build_test_loader(cfg, records_of(paths), ckpt["classes"], batch_size=2):
            detections = ours(batch.images, batch.image_sizes, original_sizes=[m["orig_size"] for m in batch.metas])
            tv_detections = tv_model([as_torchvision_input(read_image(m["image"])) for m in batch.metas])
            (image_list, _), tv_features, (tv_proposals, _) = seen["tv_input"], seen["tv_features"], seen["tv_proposals"]
            proposals, valid, _ = seen["proposals"]
            pooled = torch.cat([ours.roi_heads.pooler([f[i : i + 1] for f in seen["features"][:4]], p[None])
                                for i, p in enumerate(tv_proposals)])  # fmt: skip
            runs.append(Stages(
                input=((batch.images, batch.image_sizes), (image_list.tensors, image_list.image_sizes)),
                features=(seen["features"], list(tv_features.values())),
                proposals=([p[v] for p, v in zip(proposals, valid)], tv_proposals),
                pooled=(pooled, tv_model.roi_heads.box_roi_pool(tv_features, tv_proposals, image_list.image_sizes)),
                detections=(detections, tv_detections),
            ))  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    return runs


@pytest.fixture(scope="module")
def images(tmp_path_factory, one_thread):
    return write_images(tmp_path_factory.mktemp("tv_images"), SIZES)


# the torchvision models' min/max_size; images resized in this process: bilinear interpolation's float result
# depends on the thread count (by 1 ulp), and torchvision resizes here, with this process's threads. Frozen
# BatchNorm as torchvision computes it (a pass after each convolution) and torchvision's contiguous layout: the
# fused form and channels-last convolutions round differently, which random weights amplify into other detections
# (their equality is tested in tests/model/test_backbone.py and tests/model/test_detector.py)
SCALES = [f"data.test_scale={MIN_SIZE}", f"data.max_size={MAX_SIZE}", "data.workers=0",
          f"model.rpn_post_nms_top_n_test={POST_NMS_TEST}", "runtime.fuse_frozen_bn=False",
          "model.channels_last=False"]


@pytest.fixture(scope="module")
def res50(images):
    """(stages per batch, the converted checkpoint, torchvision's state dict): fasterrcnn_resnet50_fpn's architecture."""
    tv_model = coco_res50([as_torchvision_input(read_image(p)) for p in images], MIN_SIZE, MAX_SIZE)
    ckpt = tvi.convert_state(tv_model.state_dict(), "res50.pth", overrides=SCALES)
    return run_both(tv_model, ckpt, images), ckpt, tv_model.state_dict()


@pytest.fixture(scope="module")
def classes_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("res18") / "classes.txt"
    path.write_text("\n".join(CUSTOM_SLOTS) + "\n")
    return path


@pytest.fixture(scope="module")
def res18(images, classes_file):
    tv_model = custom_res18([as_torchvision_input(read_image(p)) for p in images], MIN_SIZE, MAX_SIZE)
    ckpt = tvi.convert_state(tv_model.state_dict(), "res18.pth", classes_file, overrides=SCALES)
    return run_both(tv_model, ckpt, images), ckpt, tv_model.state_dict()


MODELS = ["res50", "res18"]


@pytest.fixture(params=MODELS)
def converted(request):
    return request.getfixturevalue(request.param)


@pytest.mark.slow
def test_converter_reads_the_architecture(res50, res18):
    coco, custom = res50[1], res18[1]
    assert coco["net"] == "res50" and len(coco["classes"]) == 80 and coco["classes"][:3] == ("person", "bicycle", "car")
    assert "N/A" not in coco["classes"] and coco["converted_from"]["dropped_slots"] == 10
    assert "dining table" in coco["classes"] and coco["dataset"] == "coco"
    cfg = C.from_dict(coco["config"])
    assert (cfg.preset, cfg.model.fpn_channels, cfg.model.fc_dim, cfg.data.resize) == ("torchvision", 256, 1024, "torchvision")
    assert coco["model"]["roi_heads.box_head.cls_score.weight"].shape == (81, 1024)
    assert coco["model"]["roi_heads.box_head.bbox_pred.weight"].shape == (81 * 4, 1024)
    # the custom model: res18, 64-channel FPN, 256-wide box head, slot 2 unused
    assert (custom["net"], custom["classes"], custom["converted_from"]["slots"]) == ("res18", ("cat", "dog", "bird"), [0, 1, 3, 4])
    cfg = C.from_dict(custom["config"])
    assert (cfg.model.fpn_channels, cfg.model.rpn_channels, cfg.model.fc_dim) == (64, 64, 256)
    assert "optimizer" not in custom and custom["epoch"] == 0


@pytest.mark.slow
def test_the_models_detect_something(converted):
    """The random weights were made to give varied, meaningful detections (else the parity would prove little)."""
    for run in converted[0]:
        for det in run.detections[1]:
            assert len(det["boxes"]) >= 20 and det["scores"].max() - det["scores"].min() > 0.2
            assert len(det["labels"].unique()) >= 2
        for props in run.proposals[1]:
            assert len(props) == POST_NMS_TEST


@pytest.mark.slow
def test_stage_preprocessed_input_is_identical(converted):
    for run in converted[0]:
        (ours, our_sizes), (theirs, their_sizes) = run.input
        assert our_sizes == [tuple(s) for s in their_sizes]
        assert ours.shape == theirs.shape and torch.equal(ours, theirs)


@pytest.mark.slow
def test_stage_backbone_and_fpn_features(converted):
    for run in converted[0]:
        for level, (a, b) in enumerate(zip(*run.features)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"P{level + 2}")


@pytest.mark.slow
def test_stage_rpn_proposals_same_boxes(converted):
    """The same proposals; their order may differ only among equal float32 probabilities (torchvision sorts kept
    boxes with an unstable sort), which the box head, treating each RoI alone, does not see."""
    for run in converted[0]:
        for ours, theirs in zip(*run.proposals):
            assert ours.shape == theirs.shape
            distance = (ours[:, None, :] - theirs[None, :, :]).abs().amax(dim=2)  # (P, P) max coordinate difference
            assert distance.min(dim=1).values.max() < 1e-3 and distance.min(dim=0).values.max() < 1e-3


@pytest.mark.slow
def test_stage_pooled_features_of_the_same_proposals(converted):
    for run in converted[0]:
        ours, theirs = run.pooled
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_stage_detections_in_original_pixels(converted):
    runs, ckpt, _ = converted
    slot = torch.tensor(ckpt["converted_from"]["slots"])  # our label -> torchvision's slot
    for run in runs:
        for ours, theirs in zip(*run.detections):
            assert len(ours["boxes"]) == len(theirs["boxes"])
            torch.testing.assert_close(ours["boxes"], theirs["boxes"], rtol=0, atol=BOX_TOL)
            torch.testing.assert_close(ours["scores"], theirs["scores"], rtol=0, atol=SCORE_TOL)
            assert torch.equal(slot[ours["labels"]], theirs["labels"])


# --- the converter alone ------------------------------------------------------------------------------------------


def _meta_state(build):
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        return build().state_dict()


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_depth_and_shapes_read_from_the_tensors(depth):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    state = _meta_state(lambda: FasterRCNN(resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None), 91))
    arch = tvi.read_architecture(tvi.rename_state(state, "x"), "x")
    assert arch == tvi.Architecture(f"res{depth}", 256, 256, 3, 1024, 7, 91)


@pytest.mark.slow
def test_older_torchvision_key_names_convert_the_same(res18, classes_file):
    """Older torchvision versions had no inner Sequential in the RPN conv and the FPN blocks: rpn.head.conv.weight,
    backbone.fpn.inner_blocks.0.weight."""
    _, ckpt, state = res18

    def old_name(key):
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        return re.sub(r"(fpn\.(inner|layer)_blocks\.\d+)\.0\.", r"\1.", key)

    old = {old_name(k): v for k, v in state.items()}
    assert "rpn.head.conv.weight" in old and "backbone.fpn.inner_blocks.0.weight" in old
    converted = tvi.convert_state(old, "old", classes_file, overrides=SCALES)
    assert converted["model"].keys() == ckpt["model"].keys()
    for k, v in ckpt["model"].items():
        assert torch.equal(v, converted["model"][k]), k


def test_fc1_is_reordered_for_the_yxc_flatten():
    """torchvision's fc6 reads (channel, y, x); ours reads (y, x, channel): the same function after the reorder."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    torch.manual_seed(0)
    head = TwoMLPHead(8 * 7 * 7, 16)
    pooled = torch.randn(5, 8, 7, 7)
    ref = head.fc6(pooled.flatten(1))
    ours = torch.nn.functional.linear(pooled.permute(0, 2, 3, 1).flatten(1), cyx_to_yxc(head.fc6.weight, 7), head.fc6.bias)
    torch.testing.assert_close(ours, ref)


@pytest.mark.slow
def test_unsupported_and_ambiguous_weights_are_one_line_errors(tmp_path, res18):
    v2 = _meta_state(lambda: fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None))
    with pytest.raises(UserError, match="v2.pth: not a torchvision FasterRCNN.*unexpected key .*v2's conv heads"):
        tvi.convert_state(v2, "v2.pth")
    _, ckpt, state = res18
    with pytest.raises(UserError, match=r"m.pth: the predictor has 5 class slots \(background \+ 4\); name them with --classes"):
        tvi.convert_state(state, "m.pth")
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="three.txt: names 3 slots, but m.pth has 4"):
        tvi.convert_state(state, "m.pth", tmp_path / "three.txt")
    (tmp_path / "dup.txt").write_text("a\nb\nA\nc\n")
    with pytest.raises(UserError, match="dup.txt:3: class 'A' is already listed on line 1"):
        tvi.convert_state(state, "m.pth", tmp_path / "dup.txt")
    (tmp_path / "ok.txt").write_text("__background__\n" + "\n".join(CUSTOM_SLOTS) + "\n")
    with pytest.raises(UserError, match="the RPN has 3 anchors per cell, the config 2 ratios"):
        tvi.convert_state(state, "m.pth", tmp_path / "ok.txt", ["model.anchor_ratios=[0.5,2]"])
    assert tvi.convert_state(state, "m.pth", tmp_path / "ok.txt")["classes"] == ckpt["classes"]


def test_model_name_is_found_in_the_hub_cache_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError) as e:
        tvi.resolve_source("fasterrcnn_resnet50_fpn")
    cached = tmp_path / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    message = str(e.value)
    assert "\n" not in message and "not in the torch hub cache" in message and "fpn never downloads" in message
    assert "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in message
    assert str(cached) in message
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert tvi.resolve_source("fasterrcnn_resnet50_fpn") == cached
    with pytest.raises(UserError, match="maskrcnn_resnet50_fpn: no such file, and not a model name"):
        tvi.resolve_source("maskrcnn_resnet50_fpn")
    with pytest.raises(UserError, match="is a folder"):
        tvi.resolve_source(str(tmp_path))
