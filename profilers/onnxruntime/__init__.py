"""ONNX Runtime on the host CPU: the embedded default backend that always works."""

from __future__ import annotations

from hwlat.profilers.onnxruntime.loader import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]
