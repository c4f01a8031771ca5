"""Predictors: LUT lookup, kernel features, per-kernel XGBoost regressors, whole-model correction,
architecture-level and few-shot predictors. Heavy parts are imported on first use."""

from __future__ import annotations

_LAZY = {
    "LatencyPredictor": "hwlat.predictors.latency",
    "KernelRegressors": "hwlat.predictors.kernel_model",
    "ArchLatencyPredictor": "hwlat.predictors.arch",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hwlat.predictors' has no attribute {name!r}")
