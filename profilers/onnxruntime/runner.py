"""ONNX Runtime timed session: one thread by default, IOBinding so per-call cost stays small."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np

from hwlat.protocol import TimedSession


def session_options(threads: int, options: dict | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads == 1:
        # no thread pool spinning to wait on: keeps the other core quiet
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for k, v in (options or {}).get("ort_config", {}).items():
        so.add_session_config_entry(str(k), str(v))
    return so


LAYOUT_OPS = ("ReorderInput", "ReorderOutput")
SINK = "hwlat_sink"        # the node hwlat.profilers.onnxruntime.loader.with_sink appends to a kernel
SOURCE = "hwlat_source"    # the node loader.with_source puts before a residual input


def read_profile(sess, prof_dir: str) -> list[dict]:
    """Stop ORT's profiler of ``sess`` (None: it never started) and return its events; the folder
    it wrote to is removed either way."""
    try:
        if sess is None:
            return []
        with open(sess.end_profiling()) as f:
            return json.load(f)
    finally:
        shutil.rmtree(prof_dir, ignore_errors=True)


def is_node(event: dict) -> bool:
    """A profiler event of one node's kernel run."""
    return event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time")


def is_aux(event: dict) -> bool:
    """A profiler node event of a layout conversion or of a sink/source hwlat added (ORT names a
    node it rewrites after its output, which keeps the sink's or source's prefix)."""
    return event.get("args", {}).get("op_name") in LAYOUT_OPS or SINK in event["name"] or SOURCE in event["name"]


class OrtSession(TimedSession):
    backend = "onnxruntime"

    def __init__(self, model_bytes: bytes, threads: int = 1, options: dict | None = None, seed: int = 0):
        super().__init__()
        self.model_bytes = model_bytes
        self.threads = threads
        self.options = options or {}
        self.seed = seed
        self.sess = None
        self.binding = None

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        so = session_options(self.threads, self.options)
        prof_dir = None
        if self.probe_layout:
            prof_dir = tempfile.mkdtemp(prefix="hwlat-ortprof-")
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(prof_dir, "p")
        self.sess = ort.InferenceSession(self.model_bytes, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(self.seed)
        self.feeds = {}
        for i in self.sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            dtype = np.float32 if "float" in i.type else np.int64
            self.feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        t0 = time.perf_counter()
        outs = self.sess.run(None, self.feeds)
        first_run_s = time.perf_counter() - t0
        b = self.sess.io_binding()
        for name, arr in self.feeds.items():
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        for o, arr in zip(self.sess.get_outputs(), outs):
            b.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(arr)))
        self.binding = b
        if prof_dir is not None:
            self._layout_probe(prof_dir, first_run_s)

    def _layout_probe(self, prof_dir: str, first_run_s: float) -> None:
        """The share of a run spent in the layout conversions ORT adds around a lone kernel.

        On AVX2/AVX-512 ORT runs convolutions in a blocked layout (NCHWc): a single-kernel model
        gets ReorderInput before and ReorderOutput after its convolution, which inside a network
        happen only at the few places the layout changes (and the sink/source nodes hwlat adds
        so that ORT fuses as in a network). ORT's own profiler (on for these first runs only;
        ``end_profiling`` switches it off) times every node; the probe keeps the median over
        runs after the first two of the conversions' time and of all nodes' time, with their
        counts, and the measurement takes the profiler's own per-node cost off
        (:func:`hwlat.protocol.layout_from_profile`).
        """
        runs = int(np.clip(np.ceil(0.005 / max(first_run_s, 1e-6)), 12, 60))
        try:
            for _ in range(runs):
                self.sess.run_with_iobinding(self.binding)
        finally:
            events = read_profile(self.sess, prof_dir)
        windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                         if e.get("cat") == "Session" and e.get("name") == "model_run")
        if not windows:
            return
        starts = np.array([w[0] for w in windows])
        aux, total = np.zeros(len(windows)), np.zeros(len(windows))
        n_aux, n_all = np.zeros(len(windows)), np.zeros(len(windows))
        for e in events:
            if is_node(e):
                i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
                if i < 0:
                    continue
                d = float(e.get("dur", 0))
                total[i] += d
                n_all[i] += 1
                if is_aux(e):
                    aux[i] += d
                    n_aux[i] += 1
        keep = slice(2, None) if len(total) > 4 else slice(None)     # the first runs allocate
        self.layout_ms = float(np.median(aux[keep])) * 1e-3
        self.layout_nodes = (self.layout_ms, float(np.median(total[keep])) * 1e-3,
                             int(round(np.median(n_aux[keep]))), int(round(np.median(n_all[keep]))))

    def _time_runs_impl(self, number: int) -> float:
        run, b = self.sess.run_with_iobinding, self.binding
        t0 = time.perf_counter()
        for _ in range(number):
            run(b)
        return time.perf_counter() - t0

    def _infer_impl(self, feeds):
        return self.sess.run(None, feeds or self.feeds)

    def _deactivate_impl(self) -> None:
        self.binding = None
        self.sess = None
