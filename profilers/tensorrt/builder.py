"""ONNX -> serialized TensorRT engine (``.engine``), following the TensorRT 10 Python API.

The build recipe is NVIDIA's own (``samples/python/detectron2/build_engine.py`` and the Python API
reference, TensorRT 10.x): ``Builder`` -> ``create_network(0)`` -> ``OnnxParser.parse`` (errors read
back with ``num_errors`` / ``get_error``) -> ``create_builder_config`` ->
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`` -> precision flags ->
``build_serialized_network`` (``None`` on failure). Version-sensitive points are marked below.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hwlat.device import DeviceConfig
from hwlat.errors import HwlatError
from hwlat.profilers.base import BuildInput, BuildResult, Builder
from hwlat.profilers.tensorrt import gpu

# int8 also enables FP16 so layers without an INT8 kernel fall back to FP16, not FP32 (as NVIDIA's
# samples do); TF32 stays at TensorRT's default (on) for fp32, which is what a deployment gets.
PRECISION_FLAGS = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class TensorRTBuildError(HwlatError):
    """The ONNX parser or the builder rejected the model; the message carries TensorRT's errors."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    flags: tuple = ()                    # names in tensorrt.BuilderFlag
    calibrate: bool = False              # INT8 needs a calibrator (implicit quantization)
    workspace_bytes: int | None = None   # None: TensorRT's default (the device's global memory)

    def to_dict(self) -> dict:
        return {"precision": self.precision, "flags": list(self.flags), "calibrate": self.calibrate,
                "workspace_bytes": self.workspace_bytes}


def build_options(device: DeviceConfig) -> BuildOptions:
    """Precision from ``device.precision``; workspace from ``device.options['workspace_mb']``."""
    if device.precision not in PRECISION_FLAGS:
        raise HwlatError(f"unknown precision '{device.precision}' for tensorrt: use fp32, fp16 or int8")
    ws = (device.options or {}).get("workspace_mb")
    workspace = None
    if ws is not None:
        try:
            mb = int(ws)
            ok = mb > 0 and float(ws) == mb and not isinstance(ws, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise HwlatError(f"tensorrt option workspace_mb must be a positive whole number of MiB "
                             f"(got {ws!r}), e.g. options={{'workspace_mb': 1024}}")
        workspace = mb << 20
    return BuildOptions(device.precision, PRECISION_FLAGS[device.precision],
                        device.precision == "int8", workspace)


def artifact_name(name: str | None) -> str:
    """A file-system-safe stem for a model or kernel key ('' -> 'model')."""
    stem = _SAFE_NAME.sub("_", (name or "").strip()).strip("._")
    return stem or "model"


def engine_path(out_dir: Path, name: str | None) -> Path:
    return Path(out_dir) / f"{artifact_name(name)}.engine"


def metadata_path(engine: Path) -> Path:
    return Path(engine).with_name(Path(engine).name + ".json")


_LOGGER = None


def trt_logger():
    """One logger for every Builder and Runtime (TensorRT requires it to outlive their objects);
    it keeps the last errors so a failed build can say why."""
    global _LOGGER
    if _LOGGER is None:
        import tensorrt as trt

        class _CollectingLogger(trt.ILogger):
            # custom loggers must call the base __init__ (TensorRT Python API, ILogger)
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg))
                    del self.errors[:-20]

        _LOGGER = _CollectingLogger()
    return _LOGGER


def build_serialized(model_bytes: bytes, opts: BuildOptions, seed: int = 0) -> bytes:
    """Parse and build; raises :class:`TensorRTBuildError` with TensorRT's own messages."""
    import tensorrt as trt

    logger = trt_logger()
    logger.errors.clear()
    builder = trt.Builder(logger)
    # TensorRT 10: networks are always explicit-batch; the EXPLICIT_BATCH flag is deprecated and ignored
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError("TensorRT's ONNX parser rejected the model: " + "; ".join(errors or logger.errors))
    config = builder.create_builder_config()
    if opts.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    for name in opts.flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            # BuilderFlag.FP16/INT8 and int8_calibrator were removed in TensorRT 11 (strongly typed only)
            raise TensorRTBuildError(
                f"precision '{opts.precision}' needs BuilderFlag.{name}, which TensorRT {trt.__version__} "
                f"no longer has: install tensorrt 10.x, or export the model in {opts.precision} and use fp32")
        config.set_flag(flag)
    calibrator = _random_calibrator(trt, network, seed) if opts.calibrate else None
    try:
        if calibrator is not None:
            config.int8_calibrator = calibrator
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    if serialized is None:
        raise TensorRTBuildError("TensorRT could not build an engine: " + ("; ".join(logger.errors) or "no reason logged"))
    return bytes(serialized)


def _random_calibrator(trt, network, seed: int, batches: int = 2):
    """INT8 calibration on random inputs: latency does not depend on the scales it finds.

    IInt8EntropyCalibrator2 is deprecated since TensorRT 10.1 (superseded by explicit Q/DQ
    quantization) but remains the 10.x way to build an implicitly quantized engine.
    """
    inputs = [network.get_input(i) for i in range(network.num_inputs)]

    class RandomCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.left = batches
            self.rng = np.random.default_rng(seed)
            self.buffers = {}
            for t in inputs:
                shape, dtype = tuple(t.shape), np.dtype(trt.nptype(t.dtype))
                if any(d < 0 for d in shape):
                    raise TensorRTBuildError(f"input '{t.name}' has a dynamic shape {shape}: give a static shape")
                self.buffers[t.name] = (gpu.malloc(int(np.prod(shape)) * dtype.itemsize), shape, dtype)

        def get_batch_size(self):
            return int(inputs[0].shape[0]) if inputs and len(inputs[0].shape) else 1

        def get_batch(self, names):
            if self.left <= 0:
                return None
            self.left -= 1
            for n in names:
                ptr, shape, dtype = self.buffers[n]
                gpu.memcpy_htod(ptr, gpu.random_array(self.rng, shape, dtype))
            return [int(self.buffers[n][0]) for n in names]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            return None

        def release(self):
            for ptr, _, _ in self.buffers.values():
                gpu.free(ptr)
            self.buffers = {}

    return RandomCalibrator()


def write_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TensorRTBuilder(Builder):
    """Builds each input into ``<workdir>/<key>.engine``; the artifact is that path."""

    def __init__(self, device: DeviceConfig, workdir: Path):
        self.options = build_options(device)        # bad options fail here, before a long batch
        self.workdir = Path(workdir)

    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        out = []
        for inp in inputs:
            t0 = time.perf_counter()
            try:
                data = build_serialized(inp.model.SerializeToString(), self.options)
                path = engine_path(self.workdir, inp.key)
                write_atomic(path, data)
                out.append(BuildResult(inp.key, path, None, time.perf_counter() - t0))
            except Exception as e:  # noqa: BLE001 - errors are values in a batch
                out.append(BuildResult(inp.key, None, f"{type(e).__name__}: {e}", time.perf_counter() - t0))
        return out
