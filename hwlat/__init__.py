"""hwlat: hardware-aware latency modeling and compilation.

Profile a device (kernel latencies on a real runtime), predict the latency of any model or
search-space architecture from the device's stored data, and search device-tailored networks.

    import hwlat
    m = hwlat.measure("net.onnx", backend="onnxruntime", threads=1)
    dev = hwlat.profile(device="x86-ort-1t", backend="onnxruntime", spaces=["ofa-mbv3"], budget_minutes=10)
    p = hwlat.load_predictor("x86-ort-1t")
    p.predict("net.onnx")
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "measure": "hwlat.api",
    "profile": "hwlat.api",
    "load_predictor": "hwlat.api",
    "compile": "hwlat.api",
    "backends": "hwlat.api",
    "validate": "hwlat.validation",
    "Device": "hwlat.api",
    "Measurement": "hwlat.protocol",
    "Protocol": "hwlat.protocol",
    "DeviceConfig": "hwlat.device",
    "HwlatError": "hwlat.errors",
    "list_devices": "hwlat.store",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    # lazy: `import hwlat` stays light (no onnxruntime, torch or xgboost until used)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hwlat' has no attribute {name!r}")
