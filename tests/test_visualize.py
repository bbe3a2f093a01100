import pytest
import numpy as np
import torch
from PIL import Image

from fpn.visualize import detections_record, draw_detections, palette, select

OUT = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0], [40.0, 20.0, 60.0, 50.0]]),
       "scores": torch.tensor([0.6, 0.2, 0.9]), "labels": torch.tensor([2, 1, 1])}


def test_select_filters_and_sorts():
    boxes, scores, labels = select(OUT, 0.5)
    assert scores.tolist() == pytest.approx([0.9, 0.6]) and labels.tolist() == [1, 2]
    assert boxes.tolist() == [[40, 20, 60, 50], [10, 10, 30, 40]]


def test_detections_record():
    rec = detections_record("im1", "a.jpg", OUT, ("cat", "dog"), thresh=0.5)
    assert rec == {"id": "im1", "image": "a.jpg", "detections": [
        {"class": "cat", "label": 1, "score": 0.9, "box": [40.0, 20.0, 60.0, 50.0]},
        {"class": "dog", "label": 2, "score": 0.6, "box": [10.0, 10.0, 30.0, 40.0]}]}


def test_draw_puts_class_coloured_boxes_only_above_threshold():
    img = Image.new("RGB", (80, 60), (255, 255, 255))
    drawn = np.asarray(draw_detections(img, OUT, ("cat", "dog"), thresh=0.5, width=1))
    cat, dog = palette(2)
    assert tuple(drawn[50, 50]) == cat  # bottom edge of the cat box (40..60, y=50)
    assert tuple(drawn[35, 10]) == dog  # left edge of the dog box (x=10)
    assert tuple(drawn[3, 5]) == (255, 255, 255)  # the 0.2 box is not drawn (its right edge x=5)
    assert np.asarray(img).min() == 255  # the input is not modified


def test_a_label_at_the_right_edge_is_shifted_left_to_stay_whole():
    img = Image.new("RGB", (200, 120), (255, 255, 255))
    out = {"boxes": torch.tensor([[185.0, 60.0, 199.0, 100.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1])}
    drawn = np.asarray(draw_detections(img, out, ("a_long_class_name",), thresh=0.5, width=1))
    (colour,) = palette(1)
    label_rows = drawn[40:58]  # the label above the box (y 60)
    filled = np.nonzero((label_rows == colour).all(axis=2).any(axis=0))[0]
    # the label's background ends at the right edge and starts well left of the box: nothing cut off
    assert filled.max() >= 198 and filled.min() < 185 - 60
