"""coinvision reference SDK: the phone's pipeline without torch (numpy, OpenCV, TFLite/ONNX runtimes)."""

from __future__ import annotations

__version__ = "0.1.0"
