"""The one timing protocol every backend follows.

Warm-up, then ``trials`` timed trials of ``number`` runs each (``number`` calibrated so a trial
lasts at least ``min_trial_ms``), median reported with p10/p90; when the spread is above
``max_spread`` the trials are taken again (up to ``max_retries`` times) and the least spread set
is kept. Backends only supply a :class:`TimedSession` that can run its artifact ``number`` times
and say how long that took; everything statistical lives here.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Protocol:
    """Measurement protocol (stored with every measurement)."""

    warmup_ms: float = 20.0          # run at least this long (and at least 2 runs) before timing
    trials: int = 5                  # timed trials per measurement
    min_trial_ms: float = 2.0        # each trial runs `number` calls lasting at least this
    max_number: int = 1000           # cap on calls per trial
    max_spread: float = 0.10         # (p90 - p10) / median above this -> measure again
    max_retries: int = 2
    passes: int = 3                  # shuffled, interleaved passes over a set of kernels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def quick(cls) -> "Protocol":
        """For tests: fewer, shorter trials."""
        return cls(warmup_ms=2.0, trials=3, min_trial_ms=0.5, max_retries=0, passes=1)


# Whole models (calibration architectures, validation ground truth, ``hwlat measure``) are timed
# with one protocol, longer than a kernel's: a network's first runs allocate and fault pages in.
MODEL_PROTOCOL = Protocol(warmup_ms=20.0, trials=5, min_trial_ms=5.0)


@dataclass
class Measurement:
    """One latency measurement, in milliseconds per run."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    trials_ms: list[float] = field(default_factory=list)
    backend: str = ""
    threads: int = 1
    retries: int = 0
    # time per run the isolated artifact spent converting data layouts that a network keeps
    # (ONNX Runtime's NCHWc ReorderInput/ReorderOutput around a lone convolution); the kernel's
    # own cost inside a network is median_ms - layout_ms
    layout_ms: float = 0.0

    @property
    def spread(self) -> float:
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = self.spread
        return d


class TimedSession(abc.ABC):
    """A loaded, runnable artifact (Polygraphy-style lifecycle: activate / time / deactivate).

    Subclasses implement the ``_impl`` hooks only; the base class enforces the lifecycle.
    """

    backend: str = ""
    threads: int = 1
    # set before activate() for single-kernel artifacts: the backend then reports in
    # ``layout_ms`` the per-run time spent in layout conversions only an isolated kernel pays
    probe_layout: bool = False
    layout_ms: float = 0.0
    # or, where the backend's profiler times every node: (conversion ms, all-node ms, conversion
    # nodes, all nodes) per profiled run, from which the measurement takes off the profiler's
    # own per-node cost (see layout_from_profile)
    layout_nodes: tuple | None = None

    def __init__(self) -> None:
        self._active = False

    def activate(self) -> "TimedSession":
        if not self._active:
            self._activate_impl()
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            try:
                self._deactivate_impl()
            finally:
                self._active = False

    def __enter__(self) -> "TimedSession":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def time_runs(self, number: int) -> float:
        """Run the artifact ``number`` times back to back; return elapsed seconds."""
        if not self._active:
            raise RuntimeError("session used before activate()")
        return self._time_runs_impl(number)

    def infer(self, feeds: dict | None = None):
        """Run once and return outputs (for numerical checks)."""
        if not self._active:
            raise RuntimeError("session used before activate()")
        return self._infer_impl(feeds)

    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _time_runs_impl(self, number: int) -> float: ...

    def _infer_impl(self, feeds):  # pragma: no cover - optional
        raise NotImplementedError

    def _deactivate_impl(self) -> None:
        pass


def _stats(samples: list[float]) -> tuple[float, float, float]:
    a = np.asarray(samples)
    return float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90))


def measure_session(session: TimedSession, protocol: Protocol = Protocol()) -> Measurement:
    """Time an *active* session with the protocol."""
    # warm-up, which also estimates the per-run time used to pick `number`
    elapsed, runs = 0.0, 0
    while runs < 2 or elapsed * 1e3 < protocol.warmup_ms:
        elapsed += session.time_runs(1)
        runs += 1
        if runs >= protocol.max_number:
            break
    per_run_ms = max(elapsed * 1e3 / runs, 1e-4)
    number = int(min(protocol.max_number, max(1, np.ceil(protocol.min_trial_ms / per_run_ms))))

    m = trials_measurement(
        lambda: [session.time_runs(number) * 1e3 / number for _ in range(protocol.trials)],
        protocol, number, backend=session.backend, threads=session.threads)
    if session.layout_nodes is not None:
        m.layout_ms = min(layout_from_profile(m.median_ms, *session.layout_nodes), 0.9 * m.median_ms)
    else:
        m.layout_ms = min(float(session.layout_ms or 0.0), 0.9 * m.median_ms)
    return m


def layout_from_profile(median_ms: float, aux_ms: float, nodes_ms: float, n_aux: int, n_nodes: int) -> float:
    """Layout-conversion time of an unprofiled run, from a profiled run's node times.

    A profiler's node durations carry its own bookkeeping: for the smallest kernels the profiled
    nodes summed to 1.3-1.5x the unprofiled run (a 14x14 depthwise conv: nodes 0.023 ms, run
    0.0175 ms), so subtracting the conversions' profiled time left a third of the kernel, and
    taking their share of the run misplaced the bookkeeping of three small nodes. The excess of
    the profiled nodes over the unprofiled run, shared equally by the nodes, is taken off each.
    """
    per_node = max(0.0, nodes_ms - median_ms) / max(n_nodes, 1)
    return max(0.0, aux_ms - n_aux * per_node)


def trials_measurement(take_trials, protocol: Protocol, number: int, *, backend: str, threads: int) -> Measurement:
    """Take trials (a callable returning per-run ms of each trial) again while their spread is above
    the protocol's limit; keep the least spread set. Shared by local and remote runners."""
    best: tuple[float, list[float]] | None = None
    retries = 0
    for attempt in range(protocol.max_retries + 1):
        trials = list(take_trials())
        med, p10, p90 = _stats(trials)
        spread = (p90 - p10) / med if med > 0 else 0.0
        if best is None or spread < best[0]:
            best = (spread, trials)
        retries = attempt
        if spread <= protocol.max_spread:
            break
    trials = best[1]
    med, p10, p90 = _stats(trials)
    return Measurement(median_ms=med, p10_ms=p10, p90_ms=p90, runs=number * len(trials), trials_ms=trials,
                       backend=backend, threads=threads, retries=retries)
