"""VOC evaluator: hand-computed APs, the matching rules, and a cross-check against the devkit's loop."""

import numpy as np
import pytest

from fpn.errors import UserError
from fpn.evaluation import voc_eval
from fpn.evaluation.voc_eval import evaluate, ground_truth_from_records, voc_ap

EPS = np.finfo(np.float64).eps


def gt_entry(objects, classes):
    """objects: [(class, (x1, y1, x2, y2) VOC box, difficult)] -> one ground-truth entry."""
    return {
        "boxes": np.array([o[1] for o in objects], dtype=np.float64).reshape(-1, 4),
        "labels": np.array([classes.index(o[0]) + 1 for o in objects], dtype=np.int64),
        "difficult": np.array([o[2] for o in objects], dtype=bool),
    }


BOX = (1, 1, 10, 10)  # 10x10 pixels under the +1 convention

# ---------------------------------------------------------------- the hand-computed case
# Class "a": im1 has A1 = BOX and a difficult D1 = (21,21,30,30); im2 has A2 = BOX; im3 has A3 = (11,11,20,20);
# im4 has A4 = BOX; im5 has no "a" (only a "b"). npos(a) = 4 (D1 is difficult and not counted).
# Class "b": one object on im5, no detections -> AP 0.
# Class "c": only a difficult object (npos 0) -> AP undefined (None) although it has a detection.
# Class "d": nothing at all -> None.
CLASSES = ("a", "b", "c", "d")
GT = {
    "im1": gt_entry([("a", BOX, False), ("a", (21, 21, 30, 30), True)], CLASSES),
    "im2": gt_entry([("a", BOX, False)], CLASSES),
    "im3": gt_entry([("a", (11, 11, 20, 20), False), ("c", BOX, True)], CLASSES),
    "im4": gt_entry([("a", BOX, False)], CLASSES),
    "im5": gt_entry([("b", BOX, False)], CLASSES),
}
# Given out of order on purpose; ranked by score:
#   0.95 im1 BOX            -> TP (A1)
#   0.90 im1 BOX            -> FP (duplicate of A1)
#   0.85 im1 (21,21,30,30)  -> ignored (best overlap is the difficult D1, IoU 1)
#   0.80 im2 BOX            -> TP (A2)
#   0.70 im3 BOX            -> FP (IoU 0 with A3)
#   0.60 im5 BOX            -> FP (no "a" in im5)
#   0.50 im4 BOX            -> TP (A4)
DETS = {
    "a": [
        ("im4", 0.50, *BOX), ("im1", 0.90, *BOX), ("im3", 0.70, *BOX), ("im1", 0.95, *BOX),
        ("im1", 0.85, 21, 21, 30, 30), ("im5", 0.60, *BOX), ("im2", 0.80, *BOX),
    ],
    "c": [("im3", 0.9, *BOX)],
}  # fmt: skip
# cum tp = [1, 1, 1, 2, 2, 2, 3], cum fp = [0, 1, 1, 1, 2, 3, 3]
# recall    = [.25, .25, .25, .5, .5, .5, .75]
# precision = cum tp / (cum tp + cum fp) = [1/1, 1/2, 1/2, 2/3, 2/4, 2/5, 3/6]
EXPECTED_RECALL = np.array([1, 1, 1, 2, 2, 2, 3]) / 4
EXPECTED_PRECISION = np.array([1 / 1, 1 / 2, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 3 / 6])
# voc07: t = 0, .1, .2 -> max precision over all = 1;  t = .3, .4, .5 -> over recall >= t (rec .5, .75) = 2/3;
#        t = .6, .7 -> over recall .75 = 1/2;  t = .8, .9, 1 -> nothing reaches them = 0.
#        AP = (3 * 1 + 3 * 2/3 + 2 * 1/2) / 11 = 6/11
AP_A_VOC07 = 6 / 11
# area:  envelope at recall .25 -> 1, at .5 -> 2/3, at .75 -> 1/2, then 0 up to recall 1.
#        AP = .25 * 1 + .25 * 2/3 + .25 * 1/2 + .25 * 0 = 13/24
AP_A_AREA = 13 / 24


def test_hand_computed_voc07():
    r = evaluate(DETS, GT, CLASSES, metric="voc07")
    assert r.ap["a"] == pytest.approx(AP_A_VOC07, abs=1e-12)
    assert r.ap["b"] == 0.0
    assert r.ap["c"] is None and r.ap["d"] is None
    assert r.map == pytest.approx((6 / 11 + 0) / 2, abs=1e-12)  # c and d are left out of the mean
    assert r.npos == {"a": 4, "b": 1, "c": 0, "d": 0}
    assert r.num_detections == {"a": 7, "b": 0, "c": 1, "d": 0}
    assert r.num_defined == 2
    rec, prec = r.curves["a"]
    np.testing.assert_allclose(rec, EXPECTED_RECALL, rtol=0, atol=1e-15)
    np.testing.assert_allclose(prec, EXPECTED_PRECISION, rtol=0, atol=1e-15)
    assert len(r.curves["b"][0]) == 0 and len(r.curves["c"][0]) == 0


def test_hand_computed_area():
    r = evaluate(DETS, GT, CLASSES, metric="area")
    assert r.metric == "area"
    assert r.ap["a"] == pytest.approx(AP_A_AREA, abs=1e-12)
    assert r.ap["b"] == 0.0
    assert r.map == pytest.approx(13 / 48, abs=1e-12)


def test_no_defined_class_gives_nan_map():
    r = evaluate({}, {"im": gt_entry([("a", BOX, True)], ("a",))}, ("a",))
    assert r.ap == {"a": None} and np.isnan(r.map)


# ---------------------------------------------------------------- matching rules, one at a time
def single(det_box, gt_box=BOX, difficult=False, metric="voc07"):
    gt = {"im": gt_entry([("a", gt_box, difficult)], ("a",))}
    return evaluate({"a": [("im", 0.9, *det_box)]}, gt, ("a",), metric=metric)


def test_iou_exactly_half_is_not_a_match():
    # GT 10x10 = 100 px; det (1,1,10,5) = 10x5 = 50 px inside it: IoU = 50 / 100 = 0.5 -> FP
    assert single((1, 1, 10, 5)).ap["a"] == 0.0
    # (1,1,10,6): 60 / 100 = 0.6 -> TP, AP 1
    assert single((1, 1, 10, 6)).ap["a"] == pytest.approx(1.0, abs=1e-12)  # 11 * (1/11) rounds to 1 + 2e-16


def test_plus_one_convention_decides_the_match():
    # GT (1,1,2,2) is 2x2 = 4 px, det (1,1,2,3) is 2x3 = 6 px, intersection 2x2 = 4: IoU = 4/6 = 0.667 -> TP.
    # Without the +1 (w = x2 - x1) it would be 1x1 / 1x2 = 1/2 = 0.5 -> not a match.
    assert single((1, 1, 2, 3), gt_box=(1, 1, 2, 2)).ap["a"] == pytest.approx(1.0, abs=1e-12)
    # GT (1,1,10,10), det (4,1,13,10): intersection 7x10 = 70, union 200 - 70 = 130, IoU = 0.538 -> TP;
    # without +1: 6x9 = 54 / (81 + 81 - 54 = 108) = 0.5 -> would be FP.
    assert single((4, 1, 13, 10)).ap["a"] == pytest.approx(1.0, abs=1e-12)


def test_difficult_ground_truth_is_ignored_and_not_counted():
    gt = {"im": gt_entry([("a", BOX, False), ("a", (21, 21, 30, 30), True)], ("a",))}
    # rank 1 on the difficult object: ignored (not FP); rank 2 TP -> precision stays 1, AP 1
    dets = {"a": [("im", 0.9, 21, 21, 30, 30), ("im", 0.8, *BOX)]}
    r = evaluate(dets, gt, ("a",))
    assert r.npos["a"] == 1 and r.ap["a"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(r.curves["a"][0], [0.0, 1.0])  # the ignored row stays, with tp = fp = 0
    np.testing.assert_array_equal(r.curves["a"][1], [0.0, 1.0])  # 0 / max(0, eps) = 0


def test_best_overlap_difficult_beats_a_free_object():
    # the detection overlaps a non-difficult object (IoU 0.6) and, more, a difficult one (IoU 1):
    # the devkit takes the best one only -> ignored, the free object stays undetected -> AP 0
    gt = {"im": gt_entry([("a", BOX, False), ("a", (1, 1, 10, 6), True)], ("a",))}
    r = evaluate({"a": [("im", 0.9, 1, 1, 10, 6)]}, gt, ("a",))
    assert r.ap["a"] == 0.0 and r.curves["a"][1].tolist() == [0.0]


def test_duplicate_detection_is_false_positive():
    gt = {"im": gt_entry([("a", BOX, False), ("a", (31, 31, 40, 40), False)], ("a",))}
    dets = {"a": [("im", 0.9, *BOX), ("im", 0.8, *BOX), ("im", 0.7, 31, 31, 40, 40)]}
    r = evaluate(dets, gt, ("a",), metric="area")
    # TP, FP, TP: recall .5, .5, 1; precision 1, 1/2, 2/3 -> envelope 1 up to .5, 2/3 up to 1
    # AP = .5 * 1 + .5 * 2/3 = 5/6
    assert r.ap["a"] == pytest.approx(5 / 6, abs=1e-12)
    np.testing.assert_allclose(r.curves["a"][1], [1, 1 / 2, 2 / 3])


def test_detection_on_image_without_ground_truth_is_false_positive():
    gt = {"im": gt_entry([("a", BOX, False)], ("a",)), "empty": gt_entry([], ("a",))}
    r = evaluate({"a": [("empty", 0.9, *BOX), ("im", 0.8, *BOX)]}, gt, ("a",), metric="area")
    # FP then TP: recall 0, 1; precision 0, 1/2 -> AP = 1 * 1/2
    assert r.ap["a"] == 0.5


def test_only_real_objects_can_match():
    # "two" has 2 objects of class a, "one" has 1, so "one" gets an empty slot internally; a (degenerate)
    # detection at (0,0,0,0) must not match that slot: FP. Then the TP: recall 0, 1; precision 0, 1/2.
    gt = {"two": gt_entry([("a", BOX, False), ("a", BOX, False)], ("a",)), "one": gt_entry([("a", BOX, False)], ("a",))}
    r = evaluate({"a": [("one", 0.9, 0, 0, 0, 0), ("one", 0.8, *BOX)]}, gt, ("a",))
    assert r.curves["a"][1].tolist() == [0.0, 0.5]


def test_equal_scores_keep_input_order():
    gt = {"im": gt_entry([("a", BOX, False)], ("a",)), "other": gt_entry([], ("a",))}
    fp, tp = ("other", 0.5, *BOX), ("im", 0.5, *BOX)
    # FP ranked first: precision 0 then 1/2 -> voc07 AP = 11 * (1/2) / 11 = 1/2; TP first: AP 1
    assert evaluate({"a": [fp, tp]}, gt, ("a",)).ap["a"] == pytest.approx(0.5, abs=1e-12)
    assert evaluate({"a": [tp, fp]}, gt, ("a",)).ap["a"] == pytest.approx(1.0, abs=1e-12)


def test_voc07_uses_the_devkit_float_thresholds():
    # recall tops out at exactly 3/10 = 0.3: the devkit's 4th threshold is 0.30000000000000004 > 0.3,
    # so only t = 0, 0.1, 0.2 count: AP = 3/11 (not 4/11)
    assert voc_ap(np.array([0.1, 0.2, 3 / 10]), np.ones(3), "voc07") == pytest.approx(3 / 11, abs=1e-15)
    assert voc_ap(np.array([0.1, 0.2, 0.4]), np.ones(3), "voc07") == pytest.approx(5 / 11, abs=1e-15)


def test_voc_ap_empty_curve_is_zero():
    assert voc_ap(np.zeros(0), np.zeros(0), "voc07") == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), "area") == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        evaluate({}, GT, CLASSES, metric="coco")
    with pytest.raises(ValueError, match="unknown classes"):
        evaluate({"zebra": []}, GT, CLASSES)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate({"a": [("nope", 0.5, *BOX)]}, GT, CLASSES)


# ---------------------------------------------------------------- records -> ground truth
def test_ground_truth_from_records_converts_to_voc_boxes():
    rec = {
        "id": "000001", "image": "x.jpg", "width": 50, "height": 40,
        "boxes": np.array([[0, 0, 10, 10], [4.5, 9, 20, 30]], dtype=np.float32),
        "labels": np.array([2, 1]), "difficult": np.array([False, True]), "truncated": np.array([False, False]),
    }  # fmt: skip
    empty = dict(rec, id="000002", boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                 difficult=np.zeros(0, bool))  # fmt: skip
    gt = ground_truth_from_records([rec, empty], ("a", "b"))
    assert list(gt) == ["000001", "000002"]
    np.testing.assert_array_equal(gt["000001"]["boxes"], [[1, 1, 10, 10], [5.5, 10, 20, 30]])
    assert gt["000001"]["boxes"].dtype == np.float64
    assert gt["000001"]["labels"].tolist() == [2, 1] and gt["000001"]["difficult"].tolist() == [False, True]
    assert gt["000002"]["boxes"].shape == (0, 4)
    with pytest.raises(UserError, match="twice"):
        ground_truth_from_records([rec, rec], ("a", "b"))
    with pytest.raises(ValueError, match="labels"):
        ground_truth_from_records([rec], ("a",))


def test_outputs_equal_to_the_records_score_perfectly():
    # records and model outputs share the continuous convention; both go through to_voc_box -> IoU 1
    from fpn.evaluation.results import detections_from_outputs

    boxes = np.array([[0, 0, 10, 10], [4.5, 9, 20, 30], [30, 30, 31, 31]], dtype=np.float32)
    labels = np.array([1, 2, 2])
    rec = {"id": "x", "image": "x.jpg", "width": 40, "height": 40, "boxes": boxes, "labels": labels,
           "difficult": np.zeros(3, bool), "truncated": np.zeros(3, bool)}  # fmt: skip
    dets = detections_from_outputs(["x"], [{"boxes": boxes, "scores": np.ones(3), "labels": labels}], ("a", "b"))
    r = evaluate(dets, ground_truth_from_records([rec], ("a", "b")), ("a", "b"), metric="area")
    assert r.ap == {"a": 1.0, "b": 1.0}


# ---------------------------------------------------------------- cross-check with the devkit's loop
def devkit_reference(detections, gt, classes, use_07_metric, ovthresh=0.5):
    """Straightforward transcription of the devkit Python port's per-detection loop (stable sort)."""

    def ap_of(rec, prec):
        if use_07_metric:
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
                ap = ap + p / 11.0
            return ap
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])

    aps = {}
    for label, cls in enumerate(classes, start=1):
        class_recs, npos = {}, 0
        for image_id, e in gt.items():
            keep = e["labels"] == label
            class_recs[image_id] = {"bbox": e["boxes"][keep], "difficult": e["difficult"][keep],
                                    "det": [False] * int(keep.sum())}  # fmt: skip
            npos += int(np.sum(~e["difficult"][keep]))
        dets = detections.get(cls, [])
        image_ids = [d[0] for d in dets]
        confidence = np.array([d[1] for d in dets], dtype=np.float64)
        BB = np.array([d[2:] for d in dets], dtype=np.float64).reshape(-1, 4)
        sorted_ind = np.argsort(-confidence, kind="stable")
        BB = BB[sorted_ind, :]
        image_ids = [image_ids[x] for x in sorted_ind]
        nd = len(image_ids)
        tp, fp = np.zeros(nd), np.zeros(nd)
        for d in range(nd):
            R = class_recs[image_ids[d]]
            bb = BB[d, :].astype(float)
            ovmax = -np.inf
            BBGT = R["bbox"].astype(float)
            if BBGT.size > 0:
                ixmin = np.maximum(BBGT[:, 0], bb[0])
                iymin = np.maximum(BBGT[:, 1], bb[1])
                ixmax = np.minimum(BBGT[:, 2], bb[2])
                iymax = np.minimum(BBGT[:, 3], bb[3])
                iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
                ih = np.maximum(iymax - iymin + 1.0, 0.0)
                inters = iw * ih
                uni = (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (
                    BBGT[:, 3] - BBGT[:, 1] + 1.0
                ) - inters
                overlaps = inters / uni
                ovmax = np.max(overlaps)
                jmax = np.argmax(overlaps)
            if ovmax > ovthresh:
                if not R["difficult"][jmax]:
                    if not R["det"][jmax]:
                        tp[d] = 1.0
                        R["det"][jmax] = 1
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        if npos == 0:
            aps[cls] = None
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, EPS)
        aps[cls] = ap_of(rec, prec)
    return aps


def random_case(seed, n_images=40, classes=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    gt, dets = {}, {c: [] for c in classes}
    for i in range(n_images):
        k = int(rng.integers(0, 6)) if i % 7 else 0  # some images have no objects at all
        x1, y1 = rng.integers(1, 60, size=(2, k))
        w, h = rng.integers(1, 40, size=(2, k))
        boxes = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float64).reshape(-1, 4)
        labels = rng.integers(1, len(classes) + 1, size=k)
        gt[f"im{i}"] = {"boxes": boxes, "labels": labels, "difficult": rng.random(k) < 0.2}
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 4))):  # jittered copies: matches, misses and duplicates
                jitter = rng.integers(-6, 7, size=4) + np.round(rng.random(4), 1)
                score = round(float(rng.random()), 2)  # 2 decimals: plenty of equal scores
                dets[classes[label - 1]].append((f"im{i}", score, *(box + jitter)))
        for _ in range(int(rng.integers(0, 3))):  # background detections, possibly on images without GT
            x, y = rng.integers(1, 80, size=2)
            dets[classes[int(rng.integers(len(classes)))]].append(
                (f"im{i}", round(float(rng.random()), 2), float(x), float(y), x + 15.0, y + 12.0)
            )
    order = rng.permutation(len(dets["a"]))
    dets["a"] = [dets["a"][j] for j in order]  # input order must not matter beyond score ties
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_matches_devkit_loop_on_random_data(seed, metric, monkeypatch):
    if seed % 2:
        monkeypatch.setattr(voc_eval, "_CHUNK_ELEMS", 7)  # force many small IoU chunks
    gt, dets = random_case(seed)
    classes = ("a", "b", "c")
    ours = evaluate(dets, gt, classes, metric=metric)
    ref = devkit_reference(dets, gt, classes, use_07_metric=metric == "voc07")
    assert ours.ap == ref  # bit-identical
    assert 0 < ours.map < 1
