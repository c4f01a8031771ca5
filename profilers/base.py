"""The backend protocol: a builder (ONNX -> runnable artifact) and a runner (artifact -> timings).

Modelled on TVM MetaSchedule's split of build from run: batches in, results out, errors returned
as values so one bad kernel does not stop a long profile. Adding a backend means one sub-package
with a :class:`Backend` subclass and one line in ``hwlat.profilers.REGISTRY``.

The heavy SDK of a backend is imported lazily inside its sub-package; ``probe()`` says whether it
can run here and, if not, why.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx

from hwlat.device import DeviceConfig
from hwlat.protocol import Measurement, Protocol, TimedSession, measure_session


@dataclass
class BackendInfo:
    name: str
    available: bool
    version: str | None = None
    reason: str = ""                     # why not available, and what to do
    details: dict = field(default_factory=dict)   # e.g. TVM targets the build supports

    def to_dict(self) -> dict:
        return {"name": self.name, "available": self.available, "version": self.version,
                "reason": self.reason, "details": self.details}


@dataclass
class BuildInput:
    """Something to build: a kernel (key) or a whole model, always given as ONNX (NCHW)."""

    key: str
    model: onnx.ModelProto
    kind: str = "kernel"                 # "kernel" | "model"


@dataclass
class BuildResult:
    key: str
    artifact: Any = None                 # backend-specific: a path, bytes, a compiled module
    error: str | None = None
    build_seconds: float = 0.0
    kind: str = "kernel"                 # "kernel" | "model", as the BuildInput said


@dataclass
class RunResult:
    key: str
    measurement: Measurement | None = None
    error: str | None = None
    worker: str = "local"                # which device of a farm measured it


class Builder(abc.ABC):
    @abc.abstractmethod
    def build(self, inputs: Sequence[BuildInput]) -> list[BuildResult]:
        """Build each input; failures are returned as ``BuildResult(error=...)``, never raised."""


class Runner(abc.ABC):
    @abc.abstractmethod
    def run(self, builds: Sequence[BuildResult], protocol: Protocol) -> Iterator[RunResult]:
        """Measure each build, yielding results as they finish (in any order)."""

    def close(self) -> None:
        pass


class LocalRunner(Runner):
    """Runs builds one after another on this machine through a backend's TimedSession."""

    def __init__(self, backend: "Backend", device: DeviceConfig):
        self.backend = backend
        self.device = device

    def run(self, builds: Sequence[BuildResult], protocol: Protocol) -> Iterator[RunResult]:
        for b in builds:
            if b.error:
                yield RunResult(b.key, error=b.error)
                continue
            try:
                s = self.backend.session(b.artifact, self.device)
                s.probe_layout = b.kind == "kernel"
                with s:
                    m = measure_session(s, protocol)
                yield RunResult(b.key, measurement=m)
            except Exception as e:  # noqa: BLE001 - errors are values here
                yield RunResult(b.key, error=f"{type(e).__name__}: {e}")


class Backend(abc.ABC):
    """One runtime. Subclasses live in ``profilers/<name>/`` and import their SDK lazily."""

    name: str = ""
    pip_extra: str = ""                  # `pip install hwlat[<extra>]`
    # may the whole-model correction scale the kernel sum (``a``)? Only where kernels measurably
    # run uniformly slower inside a network than alone (see predictors.latency.fit_correction)
    correction_scale: bool = True
    # which of a kernel's passes the LUT keeps (hwlat.store.DeviceStore.lut): "min" where the
    # runtime's timing noise only adds time (slow spells of the host), else "median"
    pass_estimate: str = "median"
    # are the whole calibration networks measured after the kernels rather than between their
    # chunks? Where profiling itself changes how fast networks run (TVM: see TVMBackend)
    models_after_kernels: bool = False
    # can ``hwlat validate`` rebuild a few of the device's kernels in seconds to read how fast the
    # device runs now against when it was profiled (hwlat.validation.drift_probe)? Not where a kernel
    # is compiled with tuning records or built into an engine (TVM, TensorRT)
    drift_probe: bool = True

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> BackendInfo:
        """Is the runtime importable and able to run here? Never raises."""

    def versions(self) -> dict:
        info = self.probe()
        return {self.name: info.version}

    @abc.abstractmethod
    def builder(self, device: DeviceConfig, workdir: Path) -> Builder: ...

    def runner(self, device: DeviceConfig) -> Runner:
        return LocalRunner(self, device)

    @abc.abstractmethod
    def session(self, artifact: Any, device: DeviceConfig) -> TimedSession:
        """A TimedSession for a built artifact (local backends)."""

    @abc.abstractmethod
    def compile(self, model: onnx.ModelProto, out_dir: Path, device: DeviceConfig) -> Path:
        """Write a deployable artifact of a whole model into ``out_dir``; return its path."""

    def ops_run(self, artifact: Any, device: DeviceConfig) -> list[str] | None:
        """The operators the runtime itself reports running for a built kernel, or None when it
        cannot say. Fusion detection trusts this count over timing where it exists."""
        return None

    def default_fusion_rules(self, precision: str = "fp32"):
        """Fusion rules used before any were detected for a device (see hwlat.fusion)."""
        from hwlat.fusion import default_rules
        return default_rules(self.name, precision)
