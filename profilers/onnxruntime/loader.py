"""Builder and backend class for ONNX Runtime (CPUExecutionProvider)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import onnx

from hwlat.device import DeviceConfig
from hwlat.profilers.base import Backend, BackendInfo, BuildInput, BuildResult, Builder


class OnnxRuntimeBuilder(Builder):
    """ONNX is already ORT's format: the artifact is the serialized model."""

    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        out = []
        for inp in inputs:
            t0 = time.perf_counter()
            try:
                out.append(BuildResult(inp.key, inp.model.SerializeToString(), None, time.perf_counter() - t0,
                                       kind=inp.kind))
            except Exception as e:  # noqa: BLE001 - errors are values in a batch
                out.append(BuildResult(inp.key, None, f"{type(e).__name__}: {e}"))
        return out


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    pip_extra = ""

    @classmethod
    def probe(cls) -> BackendInfo:
        try:
            import onnxruntime as ort
        except Exception as e:  # noqa: BLE001
            return BackendInfo(cls.name, False, None, f"cannot import onnxruntime ({e}): pip install onnxruntime")
        providers = ort.get_available_providers()
        return BackendInfo(cls.name, True, ort.__version__, "",
                           {"providers": providers, "device": ort.get_device()})

    def builder(self, device: DeviceConfig, workdir: Path) -> Builder:
        return OnnxRuntimeBuilder()

    def session(self, artifact: Any, device: DeviceConfig):
        from hwlat.profilers.onnxruntime.runner import OrtSession

        return OrtSession(artifact, threads=device.threads, options=device.options)

    def compile(self, model: onnx.ModelProto, out_dir: Path, device: DeviceConfig) -> Path:
        """The deployable artifact for ORT is the ONNX model itself (checked to load)."""
        import onnxruntime as ort

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = (model.graph.name or "model").replace("/", "_")
        path = out_dir / f"{name}.onnx"
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save(model, str(tmp))
        ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])  # loads as it is
        tmp.replace(path)
        return path
