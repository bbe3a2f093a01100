"""fpn: Feature Pyramid Network (Faster R-CNN + FPN) object detection in plain PyTorch."""

__version__ = "0.1.0"
