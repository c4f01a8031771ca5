"""Errors a user can act on.

Every error raised for bad input or an unavailable backend derives from :class:`HwlatError`; the
CLI prints its message on one line and exits with status 2. Anything else is a bug (status 1).
"""

from __future__ import annotations


class HwlatError(Exception):
    """Bad input, unknown device, unavailable backend: the message says what and what to do."""


class BadModelError(HwlatError):
    """The model file is corrupt, not ONNX, or has dynamic shapes and no input shape was given."""


class UnsupportedOpError(HwlatError):
    """An operator no kernel type covers."""

    def __init__(self, op_type: str, node_name: str, backend: str | None = None):
        where = f" for backend '{backend}'" if backend else ""
        super().__init__(
            f"unsupported operator '{op_type}' (node '{node_name}'){where}: hwlat cannot map it to a "
            f"kernel; replace it in the model or open an issue with the model attached"
        )
        self.op_type = op_type
        self.node_name = node_name


class UnknownDeviceError(HwlatError):
    """No device of that name in the lut dir or among the shipped devices."""


class BackendUnavailableError(HwlatError):
    """The backend's runtime is not installed or cannot run on this machine."""


class UnknownKernelError(HwlatError):
    """A kernel key that neither the LUT nor any regressor of the device covers."""


class DeviceBusyError(HwlatError):
    """Another profiler holds the device's lock (parallel runs on one device corrupt latency)."""


class InfeasibleBudgetError(HwlatError):
    """No architecture of the space meets the latency budget on the device."""
