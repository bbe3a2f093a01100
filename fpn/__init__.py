"""fpn: Feature Pyramid Network (Faster R-CNN + FPN) object detection in plain PyTorch.

``from fpn import Detector`` is the Python API (:mod:`fpn.api`); it is imported on first use, so that
``import fpn`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["Detector", "Detections", "__version__"]


def __getattr__(name: str):
    if name in ("Detector", "Detections"):
        from fpn import api

        return getattr(api, name)
    raise AttributeError(f"module 'fpn' has no attribute {name!r}")
