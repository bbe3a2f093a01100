"""Class matching by name and the transfer of a detection checkpoint's weights (``--init``, zero-shot testing)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpn import config as C
from fpn.data.loader import build_train_loader
from fpn.data.voc import VOC_CLASSES
from fpn.checkpoint import weights_checkpoint
from fpn.engine.inference import evaluate_outputs, predict_records
from fpn.interop.transfer import ALIASES, load_transferred, match_classes, transfer_state, zero_shot_checkpoint
from fpn.errors import UserError
from fpn.interop.torchvision import NOT_A_CLASS, coco_slot_names
from fpn.model import build_detector

COCO = tuple(name for name in coco_slot_names()[1:] if name != NOT_A_CLASS)


def test_every_voc_class_has_a_coco_class():
    match = match_classes(COCO, VOC_CLASSES)
    assert not match.new
    pairs = {t: COCO[i] for t, i in zip(VOC_CLASSES, match.source_index)}
    assert {t: s for t, s in pairs.items() if t != s} == ALIASES
    assert pairs["person"] == "person" and pairs["tvmonitor"] == "tv"
    assert match.describe().startswith("20 of 20 classes matched from the checkpoint's 80 (aeroplane <- airplane, ")
    back = match_classes(VOC_CLASSES, COCO)  # the other way: the 20 VOC classes of COCO's 80
    assert len(COCO) - len(back.new) == 20 and COCO[back.source_index.index(VOC_CLASSES.index("sofa"))] == "couch"


def test_exact_names_win_then_spelling_then_aliases():
    match = match_classes(("Dining_Table", "tv", "tvmonitor", "dog"), ("tvmonitor", "diningtable", "kite", "Dog"))
    assert match.source_index == (2, 0, None, 3)
    assert match.new == ["kite"]
    assert match.describe() == ("3 of 4 classes matched from the checkpoint's 4 (tvmonitor, diningtable <- Dining_Table, "
                                "Dog <- dog); new, trained from scratch: kite")  # fmt: skip


def _predictor_state(num_classes, dim=3, agnostic=False, offset=0.0):
    """Predictor weights whose row r holds the value r (+ offset), so rows can be traced."""
    rows = num_classes + 1
    box_rows = 4 if agnostic else 4 * rows
    return {
        "roi_heads.box_head.cls_score.weight": torch.arange(rows).float()[:, None].expand(rows, dim) + offset,
        "roi_heads.box_head.cls_score.bias": torch.arange(rows).float() + offset,
        "roi_heads.box_head.bbox_pred.weight": torch.arange(box_rows).float()[:, None].expand(box_rows, dim) + offset,
        "roi_heads.box_head.bbox_pred.bias": torch.arange(box_rows).float() + offset,
        "other.weight": torch.ones(2),
    }


def test_transfer_state_picks_matched_rows_and_keeps_fresh_ones():
    match = match_classes(("a", "b", "c"), ("c", "new", "a"))  # source index 2, None, 0
    fresh = _predictor_state(3, offset=100.0)
    state = transfer_state(_predictor_state(3), match, fresh)
    assert state["roi_heads.box_head.cls_score.bias"].tolist() == [0, 3, 102, 1]  # background, c, fresh row 2, a
    assert state["roi_heads.box_head.bbox_pred.bias"].tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 108, 109, 110, 111,
                                                                    4, 5, 6, 7]  # fmt: skip
    assert state["roi_heads.box_head.cls_score.weight"][1].tolist() == [3, 3, 3]
    assert torch.equal(state["other.weight"], torch.ones(2))  # everything else as it is
    agnostic = transfer_state(_predictor_state(3, agnostic=True), match, _predictor_state(3, agnostic=True, offset=100))
    assert agnostic["roi_heads.box_head.bbox_pred.bias"].tolist() == [0, 1, 2, 3]  # no class rows: copied whole
    with pytest.raises(UserError, match="cls_score.weight has 4 rows, not 1 per class of its 2 classes"):
        transfer_state(_predictor_state(3), match_classes(("a", "b"), ("a",)))


def test_weights_of_another_architecture_and_zero_shot_errors():
    cfg = C.synthetic()
    cfg.model.fc_dim = 64
    source = build_detector(cfg, 3)
    ckpt = weights_checkpoint(source.state_dict(), config=C.to_dict(cfg), classes=("a", "b"), net="res18", dataset="x")
    cfg.model.fc_dim = 32
    with pytest.raises(UserError, match=r"--init s.pth: its weights do not fit this model \(roi_heads.box_head.fc1.weight "
                                        r"is \(64, 3136\) in the checkpoint, \(32, 3136\) here\); it is a res18 model"):
        load_transferred(build_detector(cfg, 2), ckpt, "s.pth", ("b",))
    with pytest.raises(UserError, match=r"s.pth: checkpoint classes \(2: a, b\) differ from the dataset's \(2: b, c\); "
                                        "no checkpoint class matches c"):
        zero_shot_checkpoint(ckpt, "s.pth", ("b", "c"))
    picked, match = zero_shot_checkpoint(ckpt, "s.pth", ("b",))
    assert picked["classes"] == ("b",) and match.source_index == (1,)
    assert torch.equal(picked["model"]["roi_heads.box_head.cls_score.weight"],
                       ckpt["model"]["roi_heads.box_head.cls_score.weight"][[0, 2]])  # fmt: skip


# --- matched classes keep their AP ----------------------------------------------------------------------------

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]  # one per class


def _rectangles(folder: Path, n: int) -> list[dict]:
    """n PNG images (160 x 120) of three solid rectangles on noise, labels 1..3 by colour, and their records."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        img = rng.integers(80, 170, (120, 160, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(3):
            w, h = rng.integers(20, 60, 2)
            x, y = rng.integers(0, 160 - w), rng.integers(0, 120 - h)
            label = int(rng.integers(3)) + 1
            img[y : y + h, x : x + w] = COLOURS[label - 1]
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        Image.fromarray(img).save(folder / f"{i}.png")
        records.append({"id": str(i), "image": str(folder / f"{i}.png"), "width": 160, "height": 120,
                        "boxes": np.array(boxes, np.float32), "labels": np.array(labels), "difficult": np.zeros(3, bool),
                        "truncated": np.zeros(3, bool)})  # fmt: skip
    return records


def _ap(model, cfg, records, classes, out):
    ids, outputs = predict_records(model, cfg, records, classes, torch.device("cpu"), 4, progress=False)
    return evaluate_outputs(ids, outputs, records, classes, "voc07", "test", out)[1].ap


@pytest.mark.slow
def test_init_onto_a_subset_with_a_renamed_class_keeps_the_matched_classes_ap(tmp_path, one_thread):
    """A model learns three classes (VOC names); its weights start a model for a dataset of the same images with two of
    them, one under its COCO name, and a new class: before any training the matched classes have the source's AP."""
    source_classes = ("motorbike", "person", "sofa")
    # ~6 objects per class: with 3 images AP moved in steps too coarse for the 0.02 below (failed on AVX2 kernels)
    records = _rectangles(tmp_path / "images", 6)
    cfg = C.synthetic()
    d, m = cfg.data, cfg.model
    d.train_scales, d.test_scale, d.max_size, d.flip, d.workers = (120,), 120, 160, False, 0
    d.test_max_size, m.nms_thresh = 0, 0.5
    m.fpn_channels = m.rpn_channels = 64
    m.fc_dim, m.roi_canonical_size = 128, 64.0
    m.rpn_batch_per_image = m.roi_batch_per_image = 64
    m.rpn_pre_nms_top_n_train = m.rpn_pre_nms_top_n_test = 200
    m.rpn_post_nms_top_n_train = m.rpn_post_nms_top_n_test = 100
    cfg.solver.batch_size = len(records)
    torch.manual_seed(0)
    model = build_detector(cfg, len(source_classes) + 1)
    (batch,) = build_train_loader(cfg, records, source_classes)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(60):  # overfits the six images
        loss = sum(model(batch.images, batch.image_sizes, batch.targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    source_ap = _ap(model, cfg, records, source_classes, tmp_path / "source")
    assert source_ap["motorbike"] > 0.8 and source_ap["person"] > 0.8
    ckpt = weights_checkpoint(model.state_dict(), config=C.to_dict(cfg), classes=source_classes, net="res18",
                              dataset="rectangles")  # fmt: skip

    target_classes = ("person", "motorcycle", "kite")  # kite: the sofa objects under a name nothing matches
    relabel = np.array([0, 2, 1, 3])  # source label -> target label
    target_records = [{**r, "labels": relabel[r["labels"]]} for r in records]
    torch.manual_seed(1)
    target = build_detector(cfg, len(target_classes) + 1)
    match = load_transferred(target, ckpt, "source.pth", target_classes)
    assert match.describe() == ("2 of 3 classes matched from the checkpoint's 3 (person, motorcycle <- motorbike); "
                                "new, trained from scratch: kite")  # fmt: skip
    target_ap = _ap(target, cfg, target_records, target_classes, tmp_path / "target")
    assert target_ap["person"] == pytest.approx(source_ap["person"], abs=0.02)
    assert target_ap["motorcycle"] == pytest.approx(source_ap["motorbike"], abs=0.02)
    assert target_ap["kite"] < 0.9 < source_ap["sofa"]  # fresh rows: the sofa rows were not reused (0.32 measured)
