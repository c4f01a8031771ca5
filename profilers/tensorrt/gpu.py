"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python (imported lazily).

Follows NVIDIA's TensorRT Python samples (``samples/python/common_runtime.py``, TensorRT 10.x):
``from cuda.bindings import runtime as cudart``, every call returns ``(cudaError_t, *results)`` and is
checked. cuda-python before 12.6 exposed the same module as ``cuda.cudart``; 13.x only has
``cuda.bindings``.
"""

from __future__ import annotations

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed (the message carries the cudaError_t name)."""


def runtime():
    """The ``cudart`` module of cuda-python; ImportError with an install hint when missing."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise ImportError("cuda-python is not installed: pip install cuda-python "
                              "(the major version matching your NVIDIA driver's CUDA)") from None
    return cudart


def check(result):
    """Unpack ``(err, *values)`` from a cudart call; raise :class:`CudaError` unless cudaSuccess."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise CudaError(f"{error_name(err)}: {error_string(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def error_name(err) -> str:
    cudart = runtime()
    name = cudart.cudaGetErrorName(err)[1]
    return name.decode() if isinstance(name, bytes) else str(name)


def error_string(err) -> str:
    cudart = runtime()
    text = cudart.cudaGetErrorString(err)[1]
    return text.decode() if isinstance(text, bytes) else str(text)


def device_status(index: int = 0) -> dict:
    """Whether the CUDA runtime sees a usable device; never raises.

    Asks the CUDA runtime itself rather than onnxruntime's provider list: ``onnxruntime-gpu``
    lists its CUDA/TensorRT providers on machines without any GPU.
    """
    status = {"ok": False, "count": 0, "name": None, "compute_capability": None,
              "cuda_runtime": None, "cuda_driver": None, "reason": ""}
    try:
        cudart = runtime()
    except ImportError as e:
        status["reason"] = str(e)
        return status
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0:
            status["reason"] = f"CUDA runtime reports {error_name(err)} ({error_string(err)})"
            if error_name(err) == "cudaErrorInsufficientDriver":
                status["reason"] += ("; no NVIDIA driver, or one older than this cuda-python: install "
                                     "the cuda-python major version matching the driver")
            return status
        status["count"] = int(count)
        if count < 1 or index >= count:
            status["reason"] = f"no CUDA device {index} (the runtime sees {count})"
            return status
        props = check(cudart.cudaGetDeviceProperties(index))
        name = props.name
        status["name"] = (name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name))
        status["compute_capability"] = f"{props.major}.{props.minor}"
        status["cuda_runtime"] = check(cudart.cudaRuntimeGetVersion())
        status["cuda_driver"] = check(cudart.cudaDriverGetVersion())
        status["ok"] = True
    except Exception as e:  # noqa: BLE001 - a probe reports, it does not raise
        status["reason"] = f"CUDA runtime query failed: {type(e).__name__}: {e}"
    return status


def malloc(nbytes: int) -> int:
    return int(check(runtime().cudaMalloc(max(1, int(nbytes)))))


def free(ptr: int) -> None:
    check(runtime().cudaFree(ptr))


def memcpy_htod(ptr: int, host: np.ndarray) -> None:
    cudart = runtime()
    host = np.ascontiguousarray(host)
    check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))


def memcpy_dtoh(host: np.ndarray, ptr: int) -> None:
    cudart = runtime()
    check(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))


def random_array(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Random input of any I/O dtype; integer inputs stay small so index-like tensors stay valid."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)
