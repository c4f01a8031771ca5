"""Run .tflite models: the timed session, ONNX-layout inference, the check against ONNX Runtime."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hwlat.errors import BadModelError
from hwlat.protocol import TimedSession
from hwlat.profilers.litert.tflite_writer import read_metadata


def load_bytes(artifact) -> bytes:
    if isinstance(artifact, (bytes, bytearray)):
        return bytes(artifact)
    path = Path(artifact)
    if not path.is_file():
        raise BadModelError(f".tflite file not found: {path}")
    return path.read_bytes()


def make_interpreter(artifact, threads: int = 1):
    """A LiteRT interpreter with the default XNNPACK delegate, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(artifact, (bytes, bytearray)):
        it = Interpreter(model_content=bytes(artifact), num_threads=threads)
    else:
        it = Interpreter(model_path=os.fspath(artifact), num_threads=threads)
    it.allocate_tensors()
    return it


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x.astype(np.float32)
    scale, zp = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(detail["dtype"])


def _dequantize(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x
    scale, zp = detail["quantization"]
    return (x.astype(np.float32) - zp) * scale


def run_tflite(artifact, feeds: list[np.ndarray], threads: int = 1, interpreter=None) -> list[np.ndarray]:
    """Outputs (ONNX layout, float) of the model for inputs given in ONNX layout (float)."""
    model = load_bytes(artifact)
    io = read_metadata(model) or {}
    it = interpreter or make_interpreter(model, threads)
    ins, outs = it.get_input_details(), it.get_output_details()
    for k, (d, x) in enumerate(zip(ins, feeds)):
        perm = io["inputs"][k]["perm"] if io else list(range(x.ndim))
        it.set_tensor(d["index"], _quantize(np.ascontiguousarray(x.transpose(perm)), d))
    it.invoke()
    res = []
    for k, d in enumerate(outs):
        y = _dequantize(it.get_tensor(d["index"]), d)
        perm = io["outputs"][k]["perm"] if io else list(range(y.ndim))
        res.append(y.transpose(np.argsort(perm)))
    return res


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
        if feeds is None:
            self._it.invoke()
            return [self._it.get_tensor(d["index"]) for d in self._it.get_output_details()]
        arrays = list(feeds.values()) if isinstance(feeds, dict) else list(feeds)
        return run_tflite(self.artifact, arrays, self.threads, interpreter=self._it)

    def _deactivate_impl(self) -> None:
        self._it = None


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name not in inits:
            shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def check_against_onnxruntime(onnx_model, tflite_path, *, seed: int = 1, threads: int = 1) -> dict:
    """Run both on the same random input; report the error of every output.

    Returns ``{"max_abs_err", "rel_err" (max abs err / max |reference|), "cosine" (lowest over
    outputs), "outputs": [...], "precision"}``; float32 models are expected at rel_err <= 1e-3.
    """
    import onnxruntime as ort

    from hwlat.ir import read_onnx

    proto = read_onnx(onnx_model)
    feeds = random_feeds(proto, seed)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)
    model = load_bytes(tflite_path)
    io = read_metadata(model) or {}
    order = [d["name"] for d in io.get("inputs", [])] or list(feeds)
    it = make_interpreter(model, threads)
    got = run_tflite(model, [feeds[n] for n in order], threads, interpreter=it)
    precision = "int8" if it.get_input_details()[0]["dtype"] == np.int8 else "fp32"
    outs = []
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            raise BadModelError(f"output shape mismatch: onnxruntime {r.shape} vs tflite {g.shape}")
        err = float(np.max(np.abs(r - g))) if r.size else 0.0
        scale = float(np.max(np.abs(r))) or 1.0
        a, b = r.reshape(-1).astype(np.float64), g.reshape(-1).astype(np.float64)
        den = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(a @ b / den) if den > 0 else float(np.allclose(a, b))
        outs.append({"shape": list(r.shape), "max_abs_err": err, "rel_err": err / scale, "cosine": cos})
    return {
        "precision": precision,
        "max_abs_err": max(o["max_abs_err"] for o in outs),
        "rel_err": max(o["rel_err"] for o in outs),
        "cosine": min(o["cosine"] for o in outs),
        "outputs": outs,
    }
