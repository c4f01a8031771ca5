"""Backends: one sub-package each, a builder and a runner behind :class:`~.base.Backend`.

Nothing heavy is imported here; a backend's SDK is imported when the backend is used.
"""

from __future__ import annotations

import importlib

from hwlat.errors import BackendUnavailableError, HwlatError

# name -> "module:Class"; adding a backend is one line here plus its folder
REGISTRY = {
    "onnxruntime": "hwlat.profilers.onnxruntime:OnnxRuntimeBackend",
    "litert": "hwlat.profilers.litert:LiteRTBackend",
    "tvm": "hwlat.profilers.tvm:TVMBackend",
    "tensorrt": "hwlat.profilers.tensorrt:TensorRTBackend",
}


def backend_class(name: str):
    if name not in REGISTRY:
        raise HwlatError(f"unknown backend '{name}': choose one of {', '.join(REGISTRY)}")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def get_backend(name: str, *, require: bool = True):
    """An instance of the backend; with ``require`` a missing runtime raises a clear error."""
    cls = backend_class(name)
    if require:
        info = cls.probe()
        if not info.available:
            raise BackendUnavailableError(f"backend '{name}' is not available: {info.reason}")
    return cls()


def probe_all() -> list:
    """BackendInfo of every registered backend (never raises)."""
    from hwlat.profilers.base import BackendInfo

    out = []
    for name in REGISTRY:
        try:
            out.append(backend_class(name).probe())
        except Exception as e:  # noqa: BLE001 - a broken install is reported, not raised
            out.append(BackendInfo(name, False, None, f"{type(e).__name__}: {e}"))
    return out
