"""LiteRT (TFLite) backend: the mobile-CPU runtime, XNNPACK kernels.

Builder: ONNX (kernel or whole model) -> .tflite written directly with the TFLite schema
(:mod:`.converter`; int8 through the official quantizer, :mod:`.quantize`). Runner: LiteRT's
``Interpreter`` with its default XNNPACK delegate and the device's thread count, timed by the
shared protocol. ``ai_edge_litert`` is imported only when the backend is used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import onnx

from hwlat.device import DeviceConfig
from hwlat.errors import HwlatError
from hwlat.profilers.base import Backend, BackendInfo, Builder, BuildInput, BuildResult
from hwlat.protocol import TimedSession

PRECISIONS = ("fp32", "int8")


def _check_precision(device: DeviceConfig) -> str:
    if device.precision not in PRECISIONS:
        raise HwlatError(f"precision '{device.precision}' is not supported by the litert backend: "
                         f"use fp32 or int8")
    return device.precision


def _safe_name(key: str, i: int) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:120]
    return f"{i:05d}_{keep}.tflite"


class LiteRTBuilder(Builder):
    """Compiles each ONNX input to ``<workdir>/<n>_<key>.tflite`` at the device's precision."""

    def __init__(self, device: DeviceConfig, workdir: Path):
        self.precision = _check_precision(device)
        self.workdir = Path(workdir)
        self._n = 0

    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        from hwlat.profilers.litert.converter import onnx_to_tflite

        self.workdir.mkdir(parents=True, exist_ok=True)
        results = []
        for inp in inputs:
            t0 = time.perf_counter()
            try:
                data = onnx_to_tflite(inp.model, self.precision)
                path = self.workdir / _safe_name(inp.key, self._n)
                self._n += 1
                path.write_bytes(data)
                results.append(BuildResult(inp.key, artifact=str(path), build_seconds=time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - errors are values in a batch
                results.append(BuildResult(inp.key, error=f"{type(e).__name__}: {e}",
                                           build_seconds=time.perf_counter() - t0))
        return results


class LiteRTSession(TimedSession):
    """A loaded .tflite: inputs set once (random, in range for int8), then ``invoke`` timed."""

    backend = "litert"

    def __init__(self, artifact: Any, threads: int = 1, seed: int = 0):
        super().__init__()
        self.artifact = artifact
        self.threads = threads
        self.seed = seed
        self._it = None

    def _activate_impl(self) -> None:
        import numpy as np

        from hwlat.profilers.litert.runtime import make_interpreter

        it = make_interpreter(self.artifact, self.threads)
        rng = np.random.default_rng(self.seed)
        for d in it.get_input_details():
            x = rng.standard_normal(tuple(d["shape"])).astype(np.float32)
            if d["dtype"] != np.float32:
                scale, zp = d["quantization"]
                x = np.clip(np.round(x / scale + zp), -128, 127)
            it.set_tensor(d["index"], x.astype(d["dtype"]))
        self._it = it

    def _time_runs_impl(self, number: int) -> float:
        invoke = self._it.invoke
        t0 = time.perf_counter()
        for _ in range(number):
            invoke()
        return time.perf_counter() - t0

    def _infer_impl(self, feeds):
        from hwlat.profilers.litert.runtime import run_tflite

        if feeds is None:
            self._it.invoke()
            return [self._it.get_tensor(d["index"]) for d in self._it.get_output_details()]
        arrays = list(feeds.values()) if isinstance(feeds, dict) else list(feeds)
        return run_tflite(self.artifact, arrays, self.threads, interpreter=self._it)

    def _deactivate_impl(self) -> None:
        self._it = None


class LiteRTBackend(Backend):
    name = "litert"
    pip_extra = "litert"

    @classmethod
    def probe(cls) -> BackendInfo:
        try:
            import ai_edge_litert  # noqa: F401
            from ai_edge_litert import interpreter  # noqa: F401
            from ai_edge_litert import schema_py_generated  # noqa: F401
            import flatbuffers  # noqa: F401
        except Exception as e:  # noqa: BLE001 - a broken install is reported, not raised
            return BackendInfo("litert", False, None,
                               f"ai-edge-litert is not importable ({type(e).__name__}: {e}); "
                               f"pip install 'hwlat[litert]'")
        from importlib import metadata

        try:
            version = metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:
            version = getattr(ai_edge_litert, "__version__", "unknown")
        return BackendInfo("litert", True, version, details={"delegate": "XNNPACK (default)",
                                                              "precisions": list(PRECISIONS)})

    def versions(self) -> dict:
        from importlib import metadata

        out = {"litert": self.probe().version}
        try:
            out["flatbuffers"] = metadata.version("flatbuffers")
        except metadata.PackageNotFoundError:
            pass
        return out

    def builder(self, device: DeviceConfig, workdir: Path) -> Builder:
        return LiteRTBuilder(device, workdir)

    def session(self, artifact: Any, device: DeviceConfig) -> TimedSession:
        return LiteRTSession(artifact, threads=device.threads)

    def compile(self, model: onnx.ModelProto, out_dir: Path, device: DeviceConfig) -> Path:
        from hwlat.profilers.litert.converter import onnx_to_tflite

        precision = _check_precision(device)
        data = onnx_to_tflite(model, precision)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = (model.graph.name if isinstance(model, onnx.ModelProto) else Path(str(model)).stem) or "model"
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = out_dir / f"{name}.tflite"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)      # never a half-written artifact
        return path


def check_against_onnxruntime(onnx_model, tflite_path, **kw) -> dict:
    """See :func:`hwlat.profilers.litert.runtime.check_against_onnxruntime`."""
    from hwlat.profilers.litert.runtime import check_against_onnxruntime as check

    return check(onnx_model, tflite_path, **kw)
