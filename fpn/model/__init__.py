"""Faster R-CNN + FPN in plain PyTorch (torchvision ops only). See docs/ARCHITECTURE.md."""

from fpn.model.backbone import uses_caffe_weights
from fpn.model.detector import FPNDetector, build_detector, for_inference

__all__ = ["FPNDetector", "build_detector", "for_inference", "uses_caffe_weights"]
