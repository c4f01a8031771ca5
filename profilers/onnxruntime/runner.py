"""ONNX Runtime timed session: one thread by default, IOBinding so per-call cost stays small."""

from __future__ import annotations

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

        self.sess = ort.InferenceSession(self.model_bytes, session_options(self.threads, self.options),
                                         providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(self.seed)
        self.feeds = {}
        for i in self.sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            dtype = np.float32 if "float" in i.type else np.int64
            self.feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        outs = self.sess.run(None, self.feeds)
        b = self.sess.io_binding()
        for name, arr in self.feeds.items():
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        for o, arr in zip(self.sess.get_outputs(), outs):
            b.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(arr)))
        self.binding = b

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
