"""TensorRT on an NVIDIA GPU: ONNX -> ``.engine`` builder, CUDA-event timed runner.

Needs the ``tensorrt`` 10.x wheel (NVIDIA's index) and cuda-python; both are imported lazily so
``import hwlat`` works without them, and :meth:`TensorRTBackend.probe` says what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from hwlat.device import DeviceConfig, write_json_atomic
from hwlat.profilers.base import Backend, BackendInfo, Builder

TRT_MISSING = "TensorRT not installed: needs an NVIDIA GPU and `pip install tensorrt` from NVIDIA's index"


class TensorRTBackend(Backend):
    name = "tensorrt"
    drift_probe = False            # each kernel is an engine build: too slow to rebuild
    pip_extra = "tensorrt"

    @classmethod
    def probe(cls) -> BackendInfo:
        try:
            import tensorrt as trt
            version = str(trt.__version__)
        except ModuleNotFoundError as e:
            detail = "" if e.name == "tensorrt" else f" ({e})"
            return BackendInfo(cls.name, False, None, TRT_MISSING + detail)
        except Exception as e:  # noqa: BLE001 - e.g. a wheel whose native libraries fail to load
            return BackendInfo(cls.name, False, None, f"{TRT_MISSING} (import failed: {type(e).__name__}: {e})")
        from hwlat.profilers.tensorrt.gpu import device_status

        status = device_status()
        if not status["ok"]:
            return BackendInfo(cls.name, False, version, f"no CUDA device visible: {status['reason']}", status)
        return BackendInfo(cls.name, True, version, "", status)

    def builder(self, device: DeviceConfig, workdir: Path) -> Builder:
        from hwlat.profilers.tensorrt.builder import TensorRTBuilder

        return TensorRTBuilder(device, workdir)

    def session(self, artifact: Any, device: DeviceConfig):
        from hwlat.profilers.tensorrt.runner import TensorRTSession

        return TensorRTSession(artifact)

    def compile(self, model: onnx.ModelProto, out_dir: Path, device: DeviceConfig) -> Path:
        """Write ``<out_dir>/<name>.engine`` and ``<name>.engine.json`` (TensorRT version, GPU, options).

        The engine is loaded and run once before it is kept: an engine only runs on the TensorRT
        version and GPU model that built it, which the JSON records.
        """
        import tensorrt as trt

        from hwlat.profilers.tensorrt import builder as b
        from hwlat.profilers.tensorrt.gpu import device_status
        from hwlat.profilers.tensorrt.runner import TensorRTSession

        opts = b.build_options(device)
        data = b.build_serialized(model.SerializeToString(), opts)
        path = b.engine_path(out_dir, model.graph.name)
        tmp = path.with_name(path.name + ".tmp")
        b.write_atomic(tmp, data)
        try:
            with TensorRTSession(tmp) as s:
                s.time_runs(1)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        gpu = device_status()
        write_json_atomic(b.metadata_path(path), {
            "backend": self.name, "engine": path.name, "tensorrt_version": str(trt.__version__),
            "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
            "cuda_runtime": gpu["cuda_runtime"], "cuda_driver": gpu["cuda_driver"],
            "build": opts.to_dict(), "model": model.graph.name or "model",
        })
        return path
