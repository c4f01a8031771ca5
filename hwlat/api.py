"""The curated public API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwlat.device import DeviceConfig
from hwlat.errors import HwlatError
from hwlat.protocol import MODEL_PROTOCOL, Measurement, Protocol


def _device_config(name, backend, threads=1, target=None, rpc_tracker=None, rpc_key=None, precision="fp32",
                   options=None) -> DeviceConfig:
    if (rpc_tracker is None) != (rpc_key is None) and backend == "tvm" and rpc_tracker:
        raise HwlatError("--rpc-tracker needs --rpc-key (the key the devices registered under)")
    if rpc_tracker and ":" not in str(rpc_tracker):
        raise HwlatError(f"--rpc-tracker must be HOST:PORT (got {rpc_tracker!r})")
    return DeviceConfig(name=name, backend=backend, threads=int(threads), target=target, rpc_tracker=rpc_tracker,
                        rpc_key=rpc_key, precision=precision, options=dict(options or {}))


def measure(model, *, backend: str = "onnxruntime", threads: int = 1, input_shape=None, target=None,
            rpc_tracker=None, rpc_key=None, precision: str = "fp32", passes: int = 3,
            protocol: Protocol | None = None, options: dict | None = None) -> Measurement:
    """End-to-end latency of one model (the ground truth): median over ``passes`` fresh sessions."""
    from hwlat.ir import load_onnx
    from hwlat.profilers import get_backend
    from hwlat.profilers.base import BuildInput

    proto = load_onnx(model, input_shape, canonical=False)
    cfg = _device_config("adhoc", backend, threads, target, rpc_tracker, rpc_key, precision, options)
    be = get_backend(backend)
    protocol = protocol or dataclasses.replace(MODEL_PROTOCOL, trials=7)
    if passes < 1:
        raise HwlatError("passes must be at least 1")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        build = be.builder(cfg, Path(tmp)).build([BuildInput(proto.graph.name or "model", proto, kind="model")])[0]
        if build.error:
            raise HwlatError(f"backend '{backend}' cannot build the model: {build.error}")
        ms: list[Measurement] = []
        for _ in range(passes):
            runner = be.runner(cfg)
            try:
                for r in runner.run([build], protocol):
                    if r.error:
                        raise HwlatError(f"backend '{backend}' failed to run the model: {r.error}")
                    ms.append(r.measurement)
            finally:
                runner.close()
    trials = [t for m in ms for t in m.trials_ms]
    med = float(np.median([m.median_ms for m in ms]))
    return Measurement(median_ms=med, p10_ms=float(np.percentile(trials, 10)), p90_ms=float(np.percentile(trials, 90)),
                       runs=sum(m.runs for m in ms), trials_ms=trials, backend=backend, threads=threads,
                       retries=sum(m.retries for m in ms))


@dataclass
class Device:
    """A profiled device: its folder, the profile summary, and its predictor."""

    name: str
    path: Path
    summary: dict

    def predictor(self):
        return load_predictor(self.name, lut_dir=self.path.parent)

    def lut(self):
        import pandas as pd

        return pd.read_csv(self.path / "lut.csv")


def profile(*, device: str, backend: str = "onnxruntime", threads: int = 1, spaces=("ofa-mbv3",), models=None,
            budget_minutes: float = 10.0, lut_dir=None, target=None, rpc_tracker=None, rpc_key=None,
            precision: str = "fp32", options: dict | None = None, protocol: Protocol | None = None,
            prior: int = 1200, arch_samples: int = 24, detect_fusion: bool = True, adaptive: bool = True,
            passes: int | None = None, progress: bool = False, seed: int = 0) -> Device:
    """Measure kernels of ``device`` into its store within the budget and fit its predictor."""
    from hwlat.profiling import Job

    cfg = _device_config(device, backend, threads, target, rpc_tracker, rpc_key, precision, options)
    if isinstance(spaces, str):
        spaces = [spaces]
    if passes is not None:
        if passes < 1:
            raise HwlatError(f"--passes must be at least 1 (got {passes})")
        import dataclasses

        protocol = dataclasses.replace(protocol or Protocol(warmup_ms=5.0, trials=5, min_trial_ms=1.5), passes=passes)
    job = Job(cfg, spaces=list(spaces or []), models_dir=models, budget_minutes=budget_minutes, lut_dir=lut_dir,
              protocol=protocol, prior=prior, arch_samples=arch_samples, detect_fusion=detect_fusion,
              adaptive=adaptive, seed=seed, progress=progress)
    summary = job.run()
    if summary.interrupted:
        raise KeyboardInterrupt
    return Device(device, job.lut_dir / device, summary.to_dict())


def load_predictor(device: str, *, lut_dir=None):
    """The predictor of a profiled device, from its stored files only."""
    from hwlat.predictors.latency import LatencyPredictor

    return LatencyPredictor.load(device, lut_dir)


def compile(model, *, backend: str, out, target=None, precision: str = "fp32", input_shape=None,
            device: str | None = None, lut_dir=None, options: dict | None = None) -> Path:  # noqa: A001
    """A deployable artifact of ``model`` for ``backend`` written into ``out``."""
    from hwlat.ir import load_onnx
    from hwlat.profilers import get_backend

    proto = load_onnx(model, input_shape, canonical=False)
    if isinstance(model, (str, os.PathLike)):
        proto.graph.name = Path(model).stem
    opts = dict(options or {})
    threads = 1
    if device:
        from hwlat.store import DeviceStore, find_device_dir

        ddir = find_device_dir(device, lut_dir)
        dev_cfg = DeviceStore(ddir, readonly=True).config()
        if dev_cfg.backend != backend:
            raise HwlatError(f"device '{device}' was profiled with backend '{dev_cfg.backend}', not '{backend}'")
        # the deployed artifact is built as the device's kernels were: same target, precision, tuning
        target = target if target is not None else dev_cfg.target
        precision = dev_cfg.precision if precision == "fp32" else precision
        threads = dev_cfg.threads
        opts = {**dev_cfg.options, **opts, "device_dir": str(ddir)}
    cfg = _device_config(device or "adhoc", backend, threads, target, None, None, precision, opts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return get_backend(backend).compile(proto, out, cfg)


def backends() -> list[dict]:
    from hwlat.profilers import probe_all

    return [b.to_dict() for b in probe_all()]
