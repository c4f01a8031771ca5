"""Measuring on remote devices over TVM RPC: one server, or a farm behind a tracker.

The recipe for one kernel (``measure_on``):
  1. connect    - ``tvm.rpc.connect(host, port)``, or a session the tracker assigns for the key
  2. upload     - the library under a unique name into the server's work dir
  3. load       - ``remote.load_module`` + a Relax VM on the remote device
  4. time       - the remote ``time_evaluator`` with the shared protocol's numbers (warm-up,
                  ``trials`` trials of ``number`` runs lasting at least ``min_trial_ms``), one
                  round trip per step rather than per run
  5. clean up   - in ``finally``: the uploaded file is removed, the VM released
Errors come back as ``RunResult(error=...)``; a dropped connection is retried on a fresh one.

The farm (``TVMRpcRunner``): the tracker hands out one session per server registered under the
key; one worker thread per session takes kernels from a shared queue, so every device
measures one kernel at a time and all devices work at once. A server that dies mid-run loses
only its current kernel, which goes back to the queue for the others.
"""

from __future__ import annotations

import collections
import queue
import socket
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from hwlat.device import DeviceConfig
from hwlat.errors import HwlatError
from hwlat.protocol import Measurement, Protocol, trials_measurement
from hwlat.profilers.base import BuildResult, RunResult, Runner


def parse_address(text: str | None, what: str) -> tuple[str, int]:
    if not text or ":" not in str(text):
        raise HwlatError(f"{what} must be HOST:PORT (got {text!r})")
    host, port = str(text).rsplit(":", 1)
    try:
        p = int(port)
    except ValueError:
        raise HwlatError(f"{what} must be HOST:PORT with a numeric port (got {text!r})") from None
    if not host or not 0 < p < 65536:
        raise HwlatError(f"{what} must be HOST:PORT (got {text!r})")
    return host, p


# -- the tracker's wire protocol (tvm.rpc.base): one request per socket -------------------------

def _tracker_call(host: str, port: int, message: list, timeout: float):
    from tvm.rpc import base

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise HwlatError(f"cannot reach the RPC tracker at {host}:{port} ({e}): is "
                         f"`python -m tvm.exec.rpc_tracker --port {port}` running?") from None
    try:
        sock.settimeout(timeout)
        sock.sendall(base.struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = base.struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise HwlatError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, message)
        return base.recvjson(sock)
    finally:
        sock.close()


def tracker_summary(host: str, port: int, timeout: float = 10.0) -> dict:
    from tvm.rpc import base

    value = _tracker_call(host, port, [base.TrackerCode.SUMMARY], timeout)
    if value[0] != base.TrackerCode.SUCCESS:
        raise HwlatError(f"RPC tracker {host}:{port} refused the summary: {value}")
    return value[1]


def tracker_servers(host: str, port: int, key: str, timeout: float = 10.0) -> tuple[list[str], int]:
    """Addresses of the servers registered under ``key``, and how many are free now."""
    s = tracker_summary(host, port, timeout)
    addrs = [f"{i['addr'][0]}:{i['addr'][1]}" for i in s.get("server_info", []) if i.get("key") == f"server:{key}"]
    free = int(s.get("queue_info", {}).get(key, {}).get("free", 0))
    return addrs, free


def request_session(host: str, port: int, key: str, timeout: float, session_timeout: float = 0):
    """(session, "server-host:port"): the tracker assigns a free server registered under ``key``."""
    from tvm import rpc
    from tvm.rpc import base

    # a socket timeout bounds the wait for a free server; TrackerSession.request would wait forever
    try:
        value = _tracker_call(host, port, [base.TrackerCode.REQUEST, key, "", 1], timeout)
    except (socket.timeout, TimeoutError):
        raise HwlatError(f"no free RPC server under key '{key}' at tracker {host}:{port} within {timeout:.0f} s"
                         ) from None
    if value[0] != base.TrackerCode.SUCCESS:
        raise HwlatError(f"RPC tracker {host}:{port} refused a session for key '{key}': {value}")
    url, sport, matchkey = value[1]
    return rpc.connect(url, sport, matchkey, session_timeout), f"{url}:{sport}"


def connect_direct(address: str, key: str = "", session_timeout: float = 0):
    from tvm import rpc

    host, port = parse_address(address, "rpc_address")
    return rpc.connect(host, port, key, session_timeout), f"{host}:{port}"


_DETECTED: dict[tuple, dict] = {}


def remote_cpu_target(device: DeviceConfig, timeout: float = 15.0) -> dict:
    """The remote device's CPU as its own LLVM sees it (needs TVM with LLVM on the device).

    Asked once per process and device; a runtime-only server (e.g. TVM's Android app) cannot
    answer, and then the target must be given.
    """
    where = (device.rpc_tracker, device.rpc_key, device.rpc_address)
    if where in _DETECTED:
        return dict(_DETECTED[where])
    try:
        if device.rpc_tracker:
            sess, _ = request_session(*parse_address(device.rpc_tracker, "--rpc-tracker"), device.rpc_key, timeout)
        else:
            sess, _ = _with_timeout(lambda: connect_direct(device.rpc_address), timeout)
        triple = sess.get_function("target.llvm_get_system_triple")()
        cpu = sess.get_function("target.llvm_get_system_cpu")()
        del sess
    except Exception as e:  # noqa: BLE001 - any failure: the user must say what the device is
        raise HwlatError(f"cannot ask the remote device for its CPU ({type(e).__name__}: {e}); give its target, "
                         f"e.g. --target '{{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\", "
                         f"\"mcpu\": \"cortex-a76\"}}'") from None
    t = {"kind": "llvm", "mtriple": str(triple), "mcpu": str(cpu)}
    _DETECTED[where] = t
    return dict(t)


def _with_timeout(fn, timeout: float):
    """Run ``fn`` in a daemon thread; TimeoutError if it does not return in time (a hung server)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def alive(session, timeout: float = 10.0) -> bool:
    """Does the server still answer? (a cheap remote call)"""
    try:
        _with_timeout(lambda: session.get_function("runtime.NumThreads")(), timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means the connection is gone
        return False


def measure_batched(s, protocol: Protocol) -> Measurement:
    """``hwlat.protocol.measure_session`` with one remote call per step instead of one per run.

    Same protocol, same statistics: warm-up of at least ``warmup_ms`` (the evaluator grows its
    run count until one repeat lasts that long, which also gives the per-run estimate), then
    ``trials`` trials of ``number`` runs lasting at least ``min_trial_ms`` each, measured again
    while the spread is above ``max_spread``. Per-run calls would put a network round trip
    between every run of a microsecond kernel: thousands of round trips per kernel.
    """
    warm = s.evaluate(2, 1, min_repeat_ms=max(1, int(np.ceil(protocol.warmup_ms))))
    per_run_ms = max(warm[0] * 1e3, 1e-4)
    number = int(min(protocol.max_number, max(1, np.ceil(protocol.min_trial_ms / per_run_ms))))
    return trials_measurement(lambda: [v * 1e3 for v in s.evaluate(number, protocol.trials)], protocol, number,
                              backend="tvm", threads=s.threads)


def measure_on(session, build: BuildResult, protocol: Protocol, device: DeviceConfig) -> Measurement:
    """Steps 2-5 of the recipe on an open session (step 1)."""
    from hwlat.profilers.tvm.runner import TVMSession

    s = TVMSession(build.artifact, threads=device.threads, remote=session,
                   set_threads=bool((device.options or {}).get("set_threads", True)))
    try:
        s.activate()                       # 2-3: upload, load into a Relax VM on the device
        return measure_batched(s, protocol)   # 4: time on the device
    finally:
        s.deactivate()                     # 5: remove the uploaded file, release the VM


class _Worker:
    def __init__(self, name: str, session):
        self.name = name
        self.session = session
        self.alive = True
        self.current: tuple[BuildResult, float] | None = None
        self.thread: threading.Thread | None = None


class TVMRpcRunner(Runner):
    """Measures builds on every RPC server of the device (tracker + key) or on one (address)."""

    def __init__(self, device: DeviceConfig):
        if not device.remote:
            raise HwlatError("TVMRpcRunner needs --rpc-tracker HOST:PORT with --rpc-key KEY, or an rpc_address")
        if device.rpc_tracker and not device.rpc_key:
            raise HwlatError("--rpc-tracker needs --rpc-key (the key the devices registered under)")
        self.device = device
        o = device.options or {}
        self.connect_timeout = float(o.get("rpc_timeout", 30.0))
        self.kernel_timeout = float(o.get("rpc_kernel_timeout", 600.0))
        self.retries = int(o.get("rpc_retries", 2))
        self.max_servers = int(o.get("rpc_max_servers", 0)) or None
        self.session_timeout = float(o.get("rpc_session_timeout", 0))
        self.farm_wait = float(o.get("rpc_farm_wait", min(10.0, self.connect_timeout)))
        self.workers: list[_Worker] = []
        self.lost: list[tuple[str, str, str]] = []     # (kernel, server, why) of every lost session
        if device.rpc_tracker:
            self.tracker = parse_address(device.rpc_tracker, "--rpc-tracker")
        else:
            self.tracker = None
            parse_address(device.rpc_address, "rpc_address")

    # -- sessions ---------------------------------------------------------------------------
    def _open_one(self, wait: float | None = None) -> _Worker:
        """Step 1 of the recipe, with retries on a refused or dropped connection; ``wait`` bounds
        the wait for a free server at the tracker."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if self.tracker:
                    sess, name = request_session(*self.tracker, self.device.rpc_key, wait or self.connect_timeout,
                                                 self.session_timeout)
                else:
                    sess, name = _with_timeout(lambda: connect_direct(
                        self.device.rpc_address, (self.device.options or {}).get("rpc_server_key", ""),
                        self.session_timeout), self.connect_timeout)
                return _Worker(name, sess)
            except HwlatError as e:
                last = e
                if "no free RPC server" in str(e) or "cannot reach" in str(e):
                    break
            except Exception as e:  # noqa: BLE001 - TVM raises RuntimeError/TVMError on refusal
                last = e
            time.sleep(min(4.0, 0.5 * 2 ** attempt))
        where = f"tracker {self.device.rpc_tracker} key '{self.device.rpc_key}'" if self.tracker \
            else f"server {self.device.rpc_address}"
        raise HwlatError(f"cannot open an RPC session on {where}: {last}")

    def _ensure_workers(self) -> None:
        self.workers = [w for w in self.workers if w.alive]
        if self.workers:
            return
        want = 1
        if self.tracker:
            addrs, free = tracker_servers(*self.tracker, self.device.rpc_key, self.connect_timeout)
            if not addrs:
                raise HwlatError(f"no RPC server is registered under key '{self.device.rpc_key}' at tracker "
                                 f"{self.device.rpc_tracker}: start one with `python -m tvm.exec.rpc_server "
                                 f"--tracker {self.device.rpc_tracker} --key {self.device.rpc_key}`")
            # every registered server, not only the free ones: a server that just ended a session
            # re-registers within a second or two; one busy elsewhere is skipped after `farm_wait`
            want = len(addrs)
            if self.max_servers:
                want = min(want, self.max_servers)
        opened: list[_Worker] = []
        errors: list[str] = []
        lock = threading.Lock()

        def open_into():
            try:
                w = self._open_one(self.farm_wait)
                with lock:
                    opened.append(w)
            except Exception as e:  # noqa: BLE001 - reported if no session at all could be opened
                with lock:
                    errors.append(str(e))

        threads = [threading.Thread(target=open_into, daemon=True) for _ in range(want)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.connect_timeout * (self.retries + 2))
        with lock:
            self.workers = list(opened)
        if not self.workers:
            raise HwlatError(errors[0] if errors else "no RPC session could be opened")

    @property
    def servers(self) -> list[str]:
        return [w.name for w in self.workers if w.alive]

    # -- the farm ---------------------------------------------------------------------------
    def run(self, builds: Sequence[BuildResult], protocol: Protocol) -> Iterator[RunResult]:
        pending: collections.deque[BuildResult] = collections.deque()
        for b in builds:
            if b.error:
                yield RunResult(b.key, error=b.error)
            else:
                pending.append(b)
        if not pending:
            return
        attempts: dict[str, int] = collections.defaultdict(int)
        results: queue.Queue = queue.Queue()
        lock = threading.Lock()
        stop = threading.Event()
        outstanding = len(pending)

        def take() -> BuildResult | None:
            with lock:
                return pending.popleft() if pending and not stop.is_set() else None

        def work(w: _Worker) -> None:
            while w.alive:
                b = take()
                if b is None:
                    return
                w.current = (b, time.monotonic())
                try:
                    m = measure_on(w.session, b, protocol, self.device)
                    results.put(("done", w, b, RunResult(b.key, measurement=m, worker=w.name)))
                except Exception as e:  # noqa: BLE001 - classified below: kernel error or lost server
                    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                    if alive(w.session, min(10.0, self.connect_timeout)):
                        results.put(("done", w, b, RunResult(b.key, error=msg[:500], worker=w.name)))
                    else:
                        results.put(("lost", w, b, msg))
                        return
                finally:
                    w.current = None

        def start(w: _Worker) -> None:
            if w.thread is not None and w.thread.is_alive():
                # a previous run() left early while this session measured: an RPC session is
                # not thread-safe, so wait for that kernel before giving the session new work
                w.thread.join(self.kernel_timeout)
                if w.thread.is_alive():
                    w.alive = False
                    return
            w.thread = threading.Thread(target=work, args=(w,), daemon=True, name=f"hwlat-rpc-{w.name}")
            w.thread.start()

        def requeue_or_fail(b: BuildResult, why: str, w: _Worker) -> RunResult | None:
            self.lost.append((b.key, w.name, why))
            attempts[b.key] += 1
            if attempts[b.key] <= self.retries:
                with lock:
                    pending.appendleft(b)
                return None
            return RunResult(b.key, error=f"lost {attempts[b.key]} RPC sessions measuring it (last on {w.name}: "
                                          f"{why})", worker=w.name)

        try:
            try:
                self._ensure_workers()
            except Exception as e:  # noqa: BLE001 - no device reachable: every kernel says why
                msg = str(e) if isinstance(e, HwlatError) else f"RPC: {type(e).__name__}: {e}"
                for b in pending:
                    yield RunResult(b.key, error=msg)
                return
            for w in list(self.workers):
                start(w)
            if not any(w.alive for w in self.workers):
                for b in pending:
                    yield RunResult(b.key, error="every RPC session is still busy with an abandoned kernel")
                return
            while outstanding:
                try:
                    kind, w, b, payload = results.get(timeout=1.0)
                except queue.Empty:
                    kind = None
                if kind == "done":
                    if not w.alive:
                        continue           # a hung worker given up on finished after all
                    outstanding -= 1
                    yield payload
                elif kind == "lost":
                    if not w.alive:
                        continue
                    w.alive = False
                    r = requeue_or_fail(b, payload, w)
                    if r is not None:
                        outstanding -= 1
                        yield r
                now = time.monotonic()
                for x in list(self.workers):
                    cur = x.current
                    if not (x.alive and cur and now - cur[1] > self.kernel_timeout):
                        continue
                    x.alive = False        # its thread is abandoned; the server may be wedged
                    r = requeue_or_fail(cur[0], f"no result within {self.kernel_timeout:.0f} s", x)
                    if r is not None:
                        outstanding -= 1
                        yield r
                with lock:
                    waiting = bool(pending)
                if not waiting or any(x.alive and x.thread is not None and x.thread.is_alive() for x in self.workers):
                    continue
                # kernels wait but no thread runs: the others ran dry before a lost kernel came back
                idle = [x for x in self.workers if x.alive]
                for x in idle:
                    start(x)
                if idle:
                    continue
                # every session is gone: one more try at the tracker or server before giving up
                try:
                    w2 = self._open_one()
                    self.workers.append(w2)
                    start(w2)
                except HwlatError as e:
                    with lock:
                        left = list(pending)
                        pending.clear()
                    for b in left:
                        outstanding -= 1
                        yield RunResult(b.key, error=f"no RPC server left: {e}")
                    if outstanding:   # taken by threads that died without reporting: cannot happen
                        return
        finally:
            stop.set()
            self.workers = [w for w in self.workers if w.alive]

    def close(self) -> None:
        # dropping the last reference to an RPCSession closes its socket; the server then
        # kills its session process and registers with the tracker again
        for w in self.workers:
            w.alive = False
            w.session = None
        self.workers = []
