"""A compiled TVM library as a TimedSession, on this machine or on a remote device over RPC.

Timing uses the runtime's own ``time_evaluator`` on a saved closure (``vm.save_function``): the
runs are timed where they execute, in C++, so the same code measures a local kernel and one on a
board behind a tracker, and Python/RPC overhead stays out of the numbers. Each ``time_runs(n)``
is one evaluator call of ``n`` runs; ``hwlat.protocol.measure_session`` does the statistics.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from hwlat.errors import HwlatError
from hwlat.protocol import TimedSession

_DEVICE_OF_KIND = {"llvm": "cpu", "c": "cpu", "cuda": "cuda", "rocm": "rocm", "opencl": "opencl",
                   "vulkan": "vulkan", "metal": "metal", "hexagon": "hexagon", "webgpu": "webgpu"}


def device_type(target: dict) -> str:
    return _DEVICE_OF_KIND.get((target or {}).get("kind", "llvm"), "cpu")


def _to_numpy(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    if isinstance(out, (list, tuple)) or hasattr(out, "__len__"):
        res = []
        for o in out:
            res.extend(_to_numpy(o))
        return res
    return [np.asarray(out)]


class TVMSession(TimedSession):
    """A Relax VM over one library; ``remote`` is an open ``tvm.rpc.RPCSession`` or None (local)."""

    backend = "tvm"

    def __init__(self, artifact: str | Path, *, threads: int = 1, remote=None, seed: int = 0,
                 set_threads: bool = True):
        super().__init__()
        from hwlat.profilers.tvm.builder import read_sidecar

        self.path = Path(artifact)
        if not self.path.is_file():
            raise HwlatError(f"TVM library {self.path} does not exist")
        self.meta = read_sidecar(self.path)
        if not self.meta.get("inputs"):
            raise HwlatError(f"{self.path} has no sidecar {self.path.name}.json with its inputs: "
                             f"build it with hwlat's TVM builder")
        self.threads = int(threads)
        self.remote = remote
        self.seed = seed
        self.set_threads = set_threads
        self.remote_name: str | None = None
        self.vm = self.dev = self.lib = None
        self._timers: dict[tuple, object] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        import tvm
        from tvm import relax

        kind = device_type(self.meta.get("target", {}))
        try:
            if self.remote is None:
                if self.set_threads and kind == "cpu":
                    _local_threads(self.threads)
                self.lib = tvm.runtime.load_module(str(self.path))
                self.dev = tvm.runtime.device(kind, 0)
            else:
                # unique name: several hwlat clients may share one server's work dir
                self.remote_name = f"hwlat-{uuid.uuid4().hex[:12]}{self.path.suffix}"
                self.remote.upload(str(self.path), target=self.remote_name)
                self.lib = self.remote.load_module(self.remote_name)
                self.dev = self.remote.device(kind, 0)
                if self.set_threads and kind == "cpu":
                    _configure_threads(self.remote.get_function, self.threads)
            self.vm = relax.VirtualMachine(self.lib, self.dev)
            rng = np.random.default_rng(self.seed)
            self.args = [tvm.runtime.tensor(_random(rng, s), device=self.dev) for s in self.meta["inputs"]]
            self.vm.save_function("main", "hwlat_main", *self.args)
        except BaseException:
            self._cleanup()
            raise

    def _time_runs_impl(self, number: int) -> float:
        return self.evaluate(number, 1)[0] * number

    def evaluate(self, number: int, repeat: int, min_repeat_ms: int = 0) -> list[float]:
        """``repeat`` timings, each the mean seconds per run over ``number`` runs, in one call to
        the runtime's evaluator (over RPC: one round trip for the whole batch)."""
        if self.vm is None:
            raise RuntimeError("session used before activate()")
        key = (number, repeat, min_repeat_ms)
        f = self._timers.get(key)
        if f is None:
            f = self.vm.time_evaluator("hwlat_main", self.dev, number=number, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms)
            self._timers[key] = f
        return [float(x) for x in f().results]

    def _infer_impl(self, feeds):
        import tvm

        if feeds is None:
            args = self.args
        else:
            names = [s["name"] for s in self.meta["inputs"]]
            missing = [n for n in names if n not in feeds]
            if missing:
                raise HwlatError(f"missing input(s) {missing} (the model takes {names})")
            args = [tvm.runtime.tensor(np.asarray(feeds[n]), device=self.dev) for n in names]
        return _to_numpy(self.vm["main"](*args))

    def _deactivate_impl(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        self._timers.clear()
        self.vm = self.lib = None
        self.args = []
        if self.remote is not None and self.remote_name:
            name, self.remote_name = self.remote_name, None
            try:
                self.remote.remove(name)
            except Exception:  # noqa: BLE001 - a dead server took its file with it
                pass


def _random(rng, spec: dict) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    if dtype.kind == "f":
        return rng.standard_normal(spec["shape"]).astype(dtype)
    return rng.integers(0, 2, size=spec["shape"]).astype(dtype)


def _local_threads(threads: int) -> None:
    """The local pool reads TVM_NUM_THREADS when it starts; config_threadpool would also pin
    the caller's main thread to a core, which a library must not do to its host process."""
    import os
    import warnings

    import tvm

    if os.environ.get("TVM_NUM_THREADS") is None:
        os.environ["TVM_NUM_THREADS"] = str(int(threads))
    n = tvm.runtime.num_threads()
    if n != threads:
        warnings.warn(f"TVM's thread pool already runs {n} thread(s); {threads} requested (set TVM_NUM_THREADS "
                      f"before the first TVM kernel runs)", RuntimeWarning, stacklevel=3)


def _configure_threads(get_function, threads: int) -> None:
    """Size a remote runtime's pool (``runtime.config_threadpool``, mode 1 = big cores; it also
    pins the session process to them, which on a phone keeps timings off the little cores)."""
    try:
        n = int(get_function("runtime.NumThreads")())
        if n != threads:
            get_function("runtime.config_threadpool")(1, int(threads))
    except Exception:  # noqa: BLE001 - an old runtime without the hooks keeps its own default
        pass
