"""LiteRT (TFLite) backend: the mobile-CPU runtime, XNNPACK kernels.

Builder: ONNX (kernel or whole model) -> .tflite written directly with the TFLite schema
(:mod:`.converter`; int8 through the official quantizer, :mod:`.quantize`). Runner: LiteRT's
``Interpreter`` with its default XNNPACK delegate and the device's thread count, timed by the
shared protocol. ``ai_edge_litert`` is imported only when the backend is used.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import onnx

from hwlat.device import DeviceConfig
from hwlat.errors import HwlatError
from hwlat.profilers.base import Backend, BackendInfo, Builder, BuildInput, BuildResult
from hwlat.profilers.litert.runner import LiteRTSession, check_against_onnxruntime  # noqa: F401
from hwlat.protocol import TimedSession  # noqa: F401 - the session type returned below

PRECISIONS = ("fp32", "int8")
# int8 calibration runs the float model on LiteRT's reference kernels, the bulk of an int8 build.
# A single kernel's quantization ranges only set scales, which do not change its run time, so
# kernels are calibrated on fewer samples than whole models (whose accuracy is reported).
KERNEL_CALIBRATION_SAMPLES = 2
FP32_TOLERANCE = 1e-3        # max abs error / max |reference| of a float32 model vs ONNX Runtime


def _check_precision(device: DeviceConfig) -> str:
    if device.precision not in PRECISIONS:
        raise HwlatError(f"precision '{device.precision}' is not supported by the litert backend: "
                         f"use fp32 or int8")
    return device.precision


def _file_name(key: str, precision: str) -> str:
    """One stable file per key and precision: rebuilding a kernel overwrites its file."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    if safe != key or len(safe) > 120:
        safe = f"{safe[:110]}-{zlib.crc32(key.encode()):08x}"
    return f"{safe}.{precision}.tflite"


class LiteRTBuilder(Builder):
    """Compiles each ONNX input to ``<workdir>/tflite/<key>.<precision>.tflite``."""

    def __init__(self, device: DeviceConfig, workdir: Path):
        self.precision = _check_precision(device)
        self.outdir = Path(workdir) / "tflite"

    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        from hwlat.profilers.litert.converter import onnx_to_tflite

        self.outdir.mkdir(parents=True, exist_ok=True)
        results = []
        for inp in inputs:
            t0 = time.perf_counter()
            try:
                kw = {"calibration_samples": KERNEL_CALIBRATION_SAMPLES} if inp.kind == "kernel" else {}
                data = onnx_to_tflite(inp.model, self.precision, **kw)
                path = self.outdir / _file_name(inp.key, self.precision)
                path.write_bytes(data)
                results.append(BuildResult(inp.key, artifact=str(path), build_seconds=time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - errors are values in a batch
                results.append(BuildResult(inp.key, error=f"{type(e).__name__}: {e}",
                                           build_seconds=time.perf_counter() - t0))
        return results


class LiteRTBackend(Backend):
    name = "litert"
    pass_estimate = "min"
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

    def ops_run(self, artifact: Any, device: DeviceConfig) -> list[str]:
        """The operators of a built kernel's .tflite, as the interpreter runs them (the int8 edge
        QUANTIZE/DEQUANTIZE aside): the structural evidence of fusion detection. The compiler
        folds a RELU/RELU6 into the CONV_2D, ADD or MUL before it, as the official converter does,
        and the kernels must run what whole compiled models run."""
        from hwlat.profilers.litert.tflite_writer import op_names

        return [o for o in op_names(Path(artifact).read_bytes()) if o not in ("QUANTIZE", "DEQUANTIZE")]

    def compile(self, model: onnx.ModelProto, out_dir: Path, device: DeviceConfig) -> Path:
        """``<out_dir>/<model name>.tflite``, checked against ONNX Runtime on a random input: a
        float32 model that disagrees is an error; the check's figures are stored in the file's
        metadata (``hwlat_check``: max_abs_err, rel_err, cosine)."""
        from hwlat.profilers.litert.converter import onnx_to_tflite
        from hwlat.profilers.litert.tflite_writer import add_metadata

        precision = _check_precision(device)
        data = onnx_to_tflite(model, precision)
        report = check_against_onnxruntime(model, data, threads=device.threads)
        if precision == "fp32" and report["rel_err"] > FP32_TOLERANCE:
            raise HwlatError(f"the compiled .tflite disagrees with ONNX Runtime (max error {report['rel_err']:.2e} "
                             f"of the output scale): a compiler bug, please report it with the model attached")
        data = add_metadata(data, "hwlat_check", {k: report[k] for k in ("precision", "max_abs_err", "rel_err",
                                                                         "cosine")})
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = (model.graph.name if isinstance(model, onnx.ModelProto) else Path(str(model)).stem) or "model"
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        path = out_dir / f"{name}.tflite"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)      # never a half-written artifact
        return path


__all__ = ["LiteRTBackend", "LiteRTBuilder", "LiteRTSession", "check_against_onnxruntime"]
