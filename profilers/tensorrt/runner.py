"""TensorRT timed session: one engine, device buffers bound by tensor name, CUDA-event timing.

TensorRT 10 I/O is by tensor name (the binding-index API is gone): ``engine.num_io_tensors``,
``engine.get_tensor_name(i)``, ``get_tensor_shape/dtype/mode``, ``context.set_tensor_address(name,
ptr)``, then ``context.execute_async_v3(stream_handle)`` (as in NVIDIA's
``samples/python/common_runtime.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwlat.protocol import TimedSession
from hwlat.profilers.tensorrt import gpu


class TensorRTSession(TimedSession):
    backend = "tensorrt"
    threads = 1

    def __init__(self, engine, device_index: int = 0, seed: int = 0):
        """``engine``: a path to a ``.engine`` file or the serialized bytes."""
        super().__init__()
        self.engine_source = engine
        self.device_index = device_index
        self.seed = seed
        self._buffers: dict[str, tuple] = {}      # name -> (ptr, shape, dtype, is_input)
        self._inputs: dict[str, np.ndarray] = {}
        self._stream = self._start = self._end = None
        self._runtime = self._engine = self._context = None

    def _activate_impl(self) -> None:
        try:
            self._setup()
        except BaseException:
            self._deactivate_impl()     # a half-built session must not keep GPU memory
            raise

    def _setup(self) -> None:
        import tensorrt as trt

        from hwlat.profilers.tensorrt.builder import trt_logger

        cudart = gpu.runtime()
        gpu.check(cudart.cudaSetDevice(self.device_index))
        data = self.engine_source
        if isinstance(data, (str, Path)):
            data = Path(data).read_bytes()
        logger = trt_logger()
        logger.errors.clear()
        self._runtime = trt.Runtime(logger)     # must outlive the engine
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise RuntimeError("TensorRT cannot deserialize the engine (engines are tied to the TensorRT "
                               "version and GPU that built them): " + "; ".join(logger.errors))
        self._context = self._engine.create_execution_context()
        self._stream = gpu.check(cudart.cudaStreamCreate())
        self._start = gpu.check(cudart.cudaEventCreate())
        self._end = gpu.check(cudart.cudaEventCreate())
        rng = np.random.default_rng(self.seed)
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"tensor '{name}' has a dynamic shape {shape}: build from a static-shape model")
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            ptr = gpu.malloc(int(np.prod(shape)) * dtype.itemsize)
            self._buffers[name] = (ptr, shape, dtype, is_input)
            if is_input:
                # copied once: timing measures the engine, not host-to-device transfers
                self._inputs[name] = gpu.random_array(rng, shape, dtype)
                gpu.memcpy_htod(ptr, self._inputs[name])
            if not self._context.set_tensor_address(name, ptr):
                raise RuntimeError(f"TensorRT refused the address of tensor '{name}'")

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _time_runs_impl(self, number: int) -> float:
        # CUDA events on the stream time the GPU work of `number` back-to-back enqueues (what trtexec
        # calls GPU compute time); a host clock would add launch latency and Python overhead
        cudart = gpu.runtime()
        gpu.check(cudart.cudaEventRecord(self._start, self._stream))
        for _ in range(number):
            self._enqueue()
        gpu.check(cudart.cudaEventRecord(self._end, self._stream))
        gpu.check(cudart.cudaEventSynchronize(self._end))
        ms = gpu.check(cudart.cudaEventElapsedTime(self._start, self._end))
        return float(ms) / 1e3

    def _infer_impl(self, feeds):
        cudart = gpu.runtime()
        for name, arr in (feeds or {}).items():
            ptr, shape, dtype, is_input = self._buffers[name]
            if not is_input:
                raise KeyError(f"'{name}' is not an input of the engine")
            gpu.memcpy_htod(ptr, np.asarray(arr, dtype=dtype).reshape(shape))
        self._enqueue()
        gpu.check(cudart.cudaStreamSynchronize(self._stream))
        outs = []
        for ptr, shape, dtype, is_input in self._buffers.values():
            if not is_input:
                host = np.empty(shape, dtype=dtype)
                gpu.memcpy_dtoh(host, ptr)
                outs.append(host)
        if feeds:   # later timing uses the session's own inputs again
            for name, arr in self._inputs.items():
                gpu.memcpy_htod(self._buffers[name][0], arr)
        return outs

    def _deactivate_impl(self) -> None:
        try:
            if self._buffers or self._stream is not None or self._start is not None:
                cudart = gpu.runtime()
                if self._stream is not None:
                    cudart.cudaStreamSynchronize(self._stream)
                for ptr, *_ in self._buffers.values():
                    cudart.cudaFree(ptr)
                for ev in (self._start, self._end):
                    if ev is not None:
                        cudart.cudaEventDestroy(ev)
                if self._stream is not None:
                    cudart.cudaStreamDestroy(self._stream)
        finally:
            self._buffers, self._inputs = {}, {}
            self._stream = self._start = self._end = None
            self._context = self._engine = self._runtime = None   # context before engine before runtime
