"""The device predictor: kernels of a model -> LUT hits or regressor estimates -> model latency.

``model_ms = a * sum(kernel_ms - call_overhead) + b * n_kernels + c``: an isolated kernel pays
the per-call cost of a session run that a kernel inside a graph does not (MEASUREMENT.md), so it
is calibrated away and the in-graph cost per kernel (``b``), the scale (``a``) and a constant
(``c``) are fitted on whole models measured during profiling, when the data justifies them.
Everything comes from the device's stored files: nothing is run or measured here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hwlat.errors import HwlatError, UnknownDeviceError
from hwlat.fusion import FusionRules, default_rules
from hwlat.ir import ModelKernels, model_kernels
from hwlat.kernels import Kernel, numel, param_count, parse_key
from hwlat.predictors.kernel_model import KernelRegressors
from hwlat.store import LUT_CSV, find_device_dir

PREDICTOR_DIR = "predictor"


NETWORK_LAYOUT_OPS = ("se", "shuffle", "concat")


def layout_block(manifest: dict) -> int:
    """Channels per block of ORT's NCHWc layout on the device's CPU (MLAS: 16 with AVX-512, else 8)."""
    return 16 if "avx512f" in str(manifest.get("host", {}).get("cpu_flags", "")) else 8


def network_layout_ms(key: str, per_element_ms: float, block: int = 16) -> float:
    """Layout conversions a network pays around a kernel that it does not pay alone.

    On ONNX Runtime the blocked (NCHWc) layout of convolutions is converted back to NCHW before a
    squeeze-excite block and forward again after it (read from ORT's optimized graphs); in
    isolation such a kernel pays none of it. A concat runs blocked only when every input's channels
    are a multiple of the block; otherwise its inputs are converted out and its output back in
    (GhostNet and DenseNet: 13% and 4% of the run in reorders, by ORT's profiler). A channel shuffle
    converts when its input is blocked: it follows a concat of its groups (ShuffleNet), blocked
    when each group's channels are a multiple of the block; otherwise the concat converted already.
    Priced per element from the conversions the device's own kernel probes measured (zero on
    runtimes that have none).
    """
    if per_element_ms <= 0:
        return 0.0
    op = key.split("_", 1)[0].split("-")[0]
    if op not in NETWORK_LAYOUT_OPS:
        return 0.0
    k = parse_key(key)
    if op == "concat":
        aligned = all(len(i) == 3 and i[2] % block == 0 for i in k.inputs)
        return 0.0 if aligned else 2.0 * per_element_ms * numel(k.output)
    if op == "shuffle" and not (len(k.inputs[0]) == 3 and (k.inputs[0][2] // max(k.attr("g", 1), 1)) % block == 0):
        return 0.0
    return 2.0 * per_element_ms * numel(k.inputs[0])


def _view_key(key: str) -> str:
    """The key a kernel is priced as. A reshape is a view: one dispatch whatever its batch, so a
    batched one (a token-wise Linear's flatten, ``reshape_i196x64_o64_b196``) is priced as the
    unbatched reshape the device measured, not extrapolated along a batch it never saw."""
    if not key.startswith("reshape_") or "_b" not in key:
        return key
    k = parse_key(key)
    if k.op != "reshape" or k.attr("b", 1) == 1:
        return key
    return Kernel(k.op, k.inputs, k.output, tuple((a, v) for a, v in k.attrs if a != "b")).key


@dataclass
class Correction:
    """``model_ms = s * (a * sum(net kernel ms) + b * n_kernels + c + d * weight_MB + e * activation_MB
    + g * footprint + call)``, ``s`` the ``pass_scale``.

    ``net`` removes the per-call cost of an isolated run; the network pays it once (``call``).
    ``d`` prices weights that are warm in cache when a kernel runs alone but cold inside a whole
    network (they are streamed once per inference); ``e`` prices activations, which come from a
    colder cache level inside a network. Terms are kept only when leave-one-out error on the
    measured networks says so.
    """

    a: float = 1.0
    b_ms: float = 0.0
    c_ms: float = 0.0
    d_ms_per_mb: float = 0.0
    overhead_ms: float = 0.0
    e_ms_per_mb: float = 0.0
    fitted_on: int = 0
    terms: str = "a"
    rmspe_before: float | None = None
    rmspe_after: float | None = None
    # the price of a weight MB rising with the network's whole weight footprint: g * W * min(W, cap)
    g_ms_per_mb2: float = 0.0
    g_cap_mb: float = 0.0
    # what a measurement reads against what the LUT keeps: the median of a network's passes over
    # its fastest pass (``pass_scale`` in hwlat.predictors.fit); 1 where the LUT keeps medians
    pass_scale: float = 1.0
    # whether the activation term counts the traffic of streaming kernels (``STREAMING_KINDS``):
    # only where the calibration networks held enough of it to price it (``fit.choose_streaming``);
    # predictors stored before the choice existed keep counting it
    streaming_act: bool = True

    def apply(self, net_sum_ms, n_kernels, weight_mb=0.0, act_mb=0.0):
        return self.pass_scale * (self.a * net_sum_ms + self.b_ms * n_kernels + self.c_ms
                                  + self.d_ms_per_mb * weight_mb + self.e_ms_per_mb * act_mb
                                  + self.g_ms_per_mb2 * footprint(weight_mb, self.g_cap_mb) + self.overhead_ms)

    def net(self, kernel_ms: np.ndarray) -> np.ndarray:
        return np.maximum(kernel_ms - self.overhead_ms, 0.1 * kernel_ms)

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in self.__dict__.items()}


def footprint(weight_mb, cap_mb: float):
    """``W * min(W, cap)``: weights priced per MB at a rate that grows with the network's weight
    footprint ``W`` (a small network's weights come back from a near cache level, a large one's
    from DRAM), held constant beyond the largest footprint the correction was fitted on (``cap``)
    rather than extrapolated."""
    w = np.asarray(weight_mb, float)
    return w * np.minimum(w, cap_mb)


# columns: 0 a (sum of kernels), 1 b (per kernel), 2 c (per network), 3 d (weight MB), 4 e (activation MB).
# The per-kernel and per-network terms (b, c) are not offered: fitted on the calibration networks of
# one space they mispredicted other families (measured: whole zoo 84-89% within 10% with them, 94.6%
# with d and e alone). Terms without column 0 keep the kernel sum at weight 1; a free scale ``a`` is
# offered only where the backend allows it (``Backend.correction_scale``: LiteRT's in-graph kernels
# run uniformly slower than alone, ORT's compute-bound ones do not), and leave-one-out on the
# calibration networks of two spaces decides.
#
# 5 g (footprint, see ``footprint``): one price per weight MB was too low for large networks and too
# high for small ones. ONNX Runtime, one thread, this host: the whole-model correction fitted 0.019
# ms/MB on the calibration networks of a 10-minute profile (1-138 MB of weights), VGG11 (129 MB)
# wanted 0.04 and came out 11-12% low; ORT's own profiler showed its 4096x4096 FC at 4.6 ms inside
# the network against 2.4 ms alone. With the footprint term, refitted on two stores (their own
# calibration networks; the zoo measured after each): leave-one-out error on the calibration networks
# 5.0% -> 3.8% and 5.0% -> 4.5%, left out a family at a time 6.5% -> 4.3%; the 56-model zoo within
# 10% 94.6% -> 96.4% and 96.4% -> 98.2%, VGG11 within 10% in both.
# LiteRT, same host, a 10-minute store (42 calibration networks of 1-138 MB of weights): the scale
# alone left the two 137-MB networks 25-36% low and VGG11 12% low; scale plus footprint ("ag"):
# leave-one-out 7.7% -> 4.6%, the 56-model zoo within 10% 80.4% -> 87.5% (VGG and ResNet within).
_TERMS = {"a": (0,), "d": (3,), "e": (4,), "de": (3, 4), "ad": (0, 3), "ae": (0, 4), "ade": (0, 3, 4),
          "dg": (3, 5), "ag": (0, 5), "adg": (0, 3, 5), "deg": (3, 4, 5)}


def _solve(feats, y, cols, call_ms=0.0):
    """Least squares in relative error; without column 0 the kernel sum enters with weight 1."""
    w = 1.0 / y
    target = y - call_ms - (0.0 if 0 in cols else feats[:, 0])
    coef, *_ = np.linalg.lstsq(feats[:, cols] * w[:, None], target * w, rcond=None)
    full = dict(zip(cols, coef))
    return [full.get(0, 1.0)] + [full.get(i, 0.0) for i in range(1, feats.shape[1])]


def _physical(coef, y, cap_mb: float = 0.0) -> bool:
    a, b, c, d, e, g = coef
    return (0.6 <= a <= 1.6 and -0.05 <= b <= 0.05 and abs(c) < 0.5 * np.median(y) and 0.0 <= d <= 0.2
            and 0.0 <= e <= 0.2 and 0.0 <= g * cap_mb <= 0.2)


# Each extra term must lower the leave-one-out error by 10%: near-ties on ~30 calibration networks
# are noise, yet the terms extrapolate differently to other families (measured on a LiteRT int8
# store: "ad" had 5% lower LOO error than "a" and predicted 80% of the zoo within 10%, "a" 89%).
PARSIMONY = 1.1


def _carries(cols: tuple, lofo_err: dict) -> bool:
    """A set of two or more terms is offered only when, fitted without a family and scored on it,
    it errs no more than every smaller set it extends: a term that fits the calibration families
    without carrying to another family is left out. Measured on a 10-minute ONNX Runtime store
    (42 networks of convnet, fbnet, ofa-mbv3; the zoo and those networks measured in one
    interleaved set): leave-one-out alone chose weights + activations ("de", 5.9% against 6.6% for
    "d"), which put 78.6% of the 56-model zoo within 10%, "d" 85.7%; left out a family at a time,
    "de" erred 8.8% and "d" 7.9%. On the LiteRT stores of the same session the rule changed
    nothing ("a" either way)."""
    if len(cols) < 2 or not lofo_err:
        return True
    subs = [c for c in lofo_err if len(c) == len(cols) - 1 and set(c) <= set(cols)]
    return all(lofo_err[cols] <= lofo_err[c] for c in subs)


def fit_correction(net_sums, counts, measured, overhead_ms: float, weight_mb=None, act_mb=None, *,
                   scale: bool = True, groups=None) -> Correction:
    """Choose the correction terms by leave-one-out relative error; refit the winner on all.
    ``scale=False`` keeps the kernel sum at weight 1 (no ``a`` term): for runtimes whose
    compute-bound kernels run in a network as fast as alone. ``groups`` (the family of each
    network, at least three families): a term added to another must also lower the error on a
    family left out of the fit, or it is not offered (see ``_carries``)."""
    net_sums, counts, y = (np.asarray(v, float) for v in (net_sums, counts, measured))
    mb = np.zeros_like(y) if weight_mb is None else np.asarray(weight_mb, float)
    amb = np.zeros_like(y) if act_mb is None else np.asarray(act_mb, float)
    cap = float(mb.max()) if len(mb) else 0.0
    feats = np.stack([net_sums, counts, np.ones_like(y), mb, amb, footprint(mb, cap)], 1)

    def held_out(train, test, cols):
        """Fit on ``train``, predict ``test``: the footprint is capped where the training
        networks end, as it is for a network the final fit never saw."""
        c = float(mb[train].max())
        f = feats.copy()
        f[:, 5] = footprint(mb, c)
        coef = _solve(f[train], y[train], cols, overhead_ms)
        return f[test] @ np.asarray(coef) + overhead_ms, _physical(coef, y, c)

    def rmspe(pred):
        return float(np.sqrt(np.mean(((pred - y) / y) ** 2)))

    base = Correction(overhead_ms=overhead_ms, fitted_on=len(y), terms="none")
    base.rmspe_before = rmspe(net_sums + overhead_ms)
    best, best_loo, best_score = base, base.rmspe_before, base.rmspe_before
    if len(y) < 4:
        best.rmspe_after = best.rmspe_before
        return best
    # term sets this fit may choose (no scale where the backend forbids one)
    offered = {name: cols for name, cols in _TERMS.items() if scale or 0 not in cols}
    fam = None if groups is None else np.asarray(groups)
    families = set() if fam is None else set(fam.tolist())
    lofo_err = {}
    if len(families) >= 3:
        for cols in offered.values():
            lofo = np.empty(len(y))
            for g in families:
                m = fam != g
                lofo[~m] = held_out(m, ~m, cols)[0]
            lofo_err[cols] = rmspe(lofo)
    for name, cols in offered.items():
        if not _carries(cols, lofo_err):
            continue
        loo = np.empty(len(y))
        ok = True
        for i in range(len(y)):
            m = np.arange(len(y)) != i
            pred, physical = held_out(m, ~m, cols)
            ok &= physical
            loo[i] = float(pred[0])
        err = rmspe(loo)
        score = err * PARSIMONY ** len(cols)
        if ok and score < best_score - 1e-4:
            a, b, c, d, e, g = _solve(feats, y, cols, overhead_ms)
            best = Correction(a, b, c, d, overhead_ms, e, len(y), name, g_ms_per_mb2=g, g_cap_mb=cap if g else 0.0)
            best_loo, best_score = err, score
    best.rmspe_before = base.rmspe_before
    best.rmspe_after = best_loo          # leave-one-out, not the training fit
    return best


@dataclass
class KernelPrediction:
    key: str
    latency_ms: float
    source: str                     # "lut" | "model"
    model: str = ""                 # which regressor (kind or _global) when source == "model"
    nodes: list = field(default_factory=list)


# kernels that read and write their tensors once with no reuse: elementwise ops, batch norm alone,
# and data movement (the whole-model activation term leaves them out, see ``act_mb``)
STREAMING_KINDS = frozenset({"bn", "add", "mul", "addc", "mulc", "concat", "catshuffle", "split", "slice", "shuffle",
                             "reshape", "transpose", "pad", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu",
                             "tanh", "leakyrelu", "clip"})


class LatencyPredictor:
    """Predicted latency of models and architectures on one profiled device."""

    def __init__(self, name: str, manifest: dict, lut: dict[str, float], regressors: KernelRegressors | None,
                 correction: Correction, device_dir: Path | None = None, layout_per_element: float = 0.0):
        self.name = name
        # network layout conversions are added to every kernel, measured or estimated: the LUT and
        # the regressors hold kernels as they cost alone, less their own conversions
        self.layout_per_element = float(layout_per_element)
        self.layout_block = layout_block(manifest)
        self.manifest = manifest
        self.lut = lut
        self.regressors = regressors
        self.correction = correction
        self.device_dir = device_dir
        fr = manifest.get("fusion_rules")
        dev = manifest.get("device", {})
        self.rules = FusionRules.from_dict(fr) if fr else default_rules(dev.get("backend", "generic"),
                                                                        dev.get("precision", "fp32"))
        self._tables: dict = {}
        self._kernels_cache: dict = {}     # model digest -> ModelKernels (bounded)
        self._latency_cache: dict = {}     # kernel key -> (ms, source, regressor)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, lut_dir=None) -> "LatencyPredictor":
        d = find_device_dir(name, lut_dir)
        manifest = json.loads((d / "device.json").read_text())
        lut_path = d / LUT_CSV
        lut = {}
        if lut_path.is_file():
            df = pd.read_csv(lut_path)
            lut = dict(zip(df["key"], df["latency_ms"].astype(float)))
        pdir = d / PREDICTOR_DIR
        regs, corr = None, Correction(overhead_ms=float(manifest.get("call_overhead_ms", 0.0)))
        meta_path = pdir / "predictor.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            try:
                regs = KernelRegressors.load(pdir, meta["kernels"])
            except ValueError as e:
                raise HwlatError(f"device '{name}': {e}") from None
            corr = Correction(**meta.get("correction", {}))
            per_elem = float(meta.get("layout_ms_per_element", 0.0))
        else:
            per_elem = 0.0
        if not lut and regs is None:
            raise UnknownDeviceError(f"device '{name}' has no measurements yet; run hwlat profile for it")
        return cls(name, manifest, lut, regs, corr, d, layout_per_element=per_elem)

    # -- kernels -----------------------------------------------------------------------------
    def kernel_latencies(self, keys: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
        """Per key: latency_ms (as measured in isolation), source ('lut'|'model'), regressor used."""
        cache = self._latency_cache
        if all(k in cache for k in keys):
            vals = [cache[k] for k in keys]
            return np.array([v[0] for v in vals]), [v[1] for v in vals], [v[2] for v in vals]
        out, sources, used = self._kernel_latencies(keys)
        if len(cache) < 200_000:
            for k, o, s, u in zip(keys, out, sources, used):
                cache[k] = (float(o), s, u)
        return out, sources, used

    def _kernel_latencies(self, keys: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
        out = np.empty(len(keys))
        sources, used = ["lut"] * len(keys), [""] * len(keys)
        miss = []
        looked = [_view_key(k) for k in keys]
        for i, k in enumerate(looked):
            v = self.lut.get(k)
            if v is None:
                miss.append(i)
            else:
                out[i] = v
        if miss:
            if self.regressors is None:
                raise HwlatError(f"device '{self.name}' has no regressors for kernels outside its LUT "
                                 f"(e.g. {keys[miss[0]]}); run hwlat profile again to fit them")
            pred, which = self.regressors.predict([looked[i] for i in miss])
            for j, i in enumerate(miss):
                out[i], sources[i], used[i] = pred[j], "model", which[j]
        if self.layout_per_element > 0:
            out += np.array([network_layout_ms(k, self.layout_per_element, self.layout_block) for k in keys])
        return out, sources, used

    def kernels_of(self, model, input_shape=None) -> ModelKernels:
        digest = _digest(model, input_shape)
        if digest is not None and digest in self._kernels_cache:
            return self._kernels_cache[digest]
        mk = model_kernels(model, self.rules, input_shape=input_shape)
        if digest is not None:
            if len(self._kernels_cache) >= 256:
                self._kernels_cache.pop(next(iter(self._kernels_cache)))
            self._kernels_cache[digest] = mk
        return mk

    def predict_kernels(self, model, input_shape=None) -> tuple[float, list[KernelPrediction]]:
        mk = self.kernels_of(model, input_shape)
        keys = mk.keys
        raw, sources, used = self.kernel_latencies(keys)
        net = self.correction.net(raw)
        mb = np.array([self.cold_mb(k.kernel) for k in mk.kernels])
        amb = np.array([self.act_mb(k.kernel) for k in mk.kernels])
        total = float(self.correction.apply(net.sum(), len(keys), mb.sum(), amb.sum()))
        # per-kernel share of the corrected total, so the breakdown adds up to the prediction
        c = self.correction
        # the footprint term is shared out in proportion to each kernel's weights
        g = c.g_ms_per_mb2 * float(footprint(mb.sum(), c.g_cap_mb)) / mb.sum() if mb.sum() > 0 else 0.0
        share = c.pass_scale * (net * c.a + c.b_ms + (c.c_ms + c.overhead_ms) / max(len(keys), 1)
                                + (c.d_ms_per_mb + g) * mb + c.e_ms_per_mb * amb)
        preds = [KernelPrediction(k, float(s), src, u, inst.nodes)
                 for k, s, src, u, inst in zip(keys, share, sources, used, mk.kernels)]
        return total, preds

    @staticmethod
    def cold_mb(kernel) -> float:
        """Weights (MB): warm in cache when the kernel runs alone, streamed once per inference
        inside a network (every weight of a network is touched once between two uses)."""
        return param_count(kernel) * 4 * 1e-6

    def act_mb(self, kernel) -> float:
        """Activations read and written (MB): alone, a kernel re-reads the same warm tensors; in a
        network they come from the previous kernel through a colder level of the cache.

        The term is priced on the calibration networks. Where those hold almost no streaming
        kernels (:data:`STREAMING_KINDS`; ONNX Runtime fuses every activation of the OFA, FBNet and
        convnet spaces into its convolutions: 1.3% of their traffic), their price is the compute
        kernels' and is not extrapolated to the streaming ones (``Correction.streaming_act``
        False): their traffic counts none. Measured on ONNX Runtime, AMD EPYC host, one 10-minute
        store scored against the zoo measured at four different hours (16% of its traffic is
        streaming: EfficientNet-B0's 33 stand-alone SiLU kernels, ShuffleNet's and GhostNet's
        concats and splits): counting it over-predicted EfficientNet-B0-1.0 by 10-11% each time;
        leaving it out, within 10% 83.9 -> 91.1%, 94.6 -> 94.6%, 85.7 -> 89.3%, 94.6 -> 96.4%
        (RMSPE 8.2 -> 7.2, 4.5 -> 3.8, 6.5 -> 6.1, 4.6 -> 4.3%). On LiteRT (hard-swish runs as its
        own kernel) the calibration networks do hold streaming kernels, and counting them kept a
        LiteRT fp32 store's fit ("ae", leave-one-out 3.2% against 3.8% without them)."""
        if not self.correction.streaming_act and kernel.kind in STREAMING_KINDS:
            return 0.0
        return (sum(numel(i) for i in kernel.inputs) + numel(kernel.output)) * 4 * 1e-6

    # -- public ------------------------------------------------------------------------------
    def predict(self, model, input_shape=None) -> float:
        """Latency in ms of an ONNX path/ModelProto, a torch module (with input_shape), or a space arch."""
        arch = _as_space_arch(model)
        if arch is not None:
            return float(self.predict_many([arch])[0])
        return self.predict_kernels(model, input_shape)[0]

    def breakdown(self, model, input_shape=None) -> dict:
        total, preds = self.predict_kernels(model, input_shape)
        return {"latency_ms": total, "device": self.name,
                "kernels": [{"key": p.key, "latency_ms": p.latency_ms, "source": p.source,
                             **({"regressor": p.model} if p.source == "model" else {})} for p in preds]}

    def predict_many(self, archs, space=None) -> np.ndarray:
        """Vectorised latency (ms) of many architectures of one search space."""
        from hwlat.predictors.space_tables import table_for

        if isinstance(archs, np.ndarray) and space is not None:
            from hwlat.search import spaces as _spaces

            sp = _spaces.get(space) if isinstance(space, str) else space
            table = self._tables.get(sp.name) or self._tables.setdefault(sp.name, _table(sp, self))
            if hasattr(table, "parts"):
                return table.predict(archs)
            archs = sp.from_matrix(archs)
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        if space is None:
            space = _space_of(archs[0])
        from hwlat.search import spaces as _spaces

        space = _spaces.get(space) if isinstance(space, str) else space
        table = self._tables.get(space.name)
        if table is None:
            table = table_for(space, self)
            self._tables[space.name] = table
        return table.predict(archs)

    def arch_kernels_exact(self, space, arch) -> float:
        """Slow exact path: build the torch model, export, detect kernels, predict."""
        arch = space.parse(arch)
        return self.predict_kernels(space.build(arch), input_shape=space.input_shape(arch))[0]


def _table(space, predictor):
    from hwlat.predictors.space_tables import table_for

    return table_for(space, predictor)


def _digest(model, input_shape):
    """A content digest of an ONNX path or ModelProto (torch modules are not cached)."""
    import hashlib
    import os

    import onnx

    h = hashlib.blake2b(repr(input_shape).encode(), digest_size=16)
    if isinstance(model, (str, os.PathLike)):
        try:
            st = os.stat(model)   # a file is the same model while its path, size and mtime are
        except OSError:
            return None
        h.update(f"{os.path.abspath(model)}|{st.st_size}|{st.st_mtime_ns}".encode())
    elif isinstance(model, onnx.ModelProto):
        h.update(model.SerializeToString())
    else:
        return None
    return h.hexdigest()


def _as_space_arch(obj):
    mod = type(obj).__module__ or ""
    return obj if mod.startswith("hwlat.search") else None


def _space_of(arch) -> str:
    """The space an architecture (object, key string or native spec) belongs to."""
    from hwlat.search import spaces

    for s in spaces.names():
        sp = spaces.get(s)
        try:
            parsed = sp.parse(arch)
        except Exception:  # noqa: BLE001 - not this space
            continue
        if isinstance(arch, (str, dict, list, tuple)) or type(parsed) is type(arch):
            return s
    raise HwlatError(f"cannot tell the search space of {arch!r}; pass space=")


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    r = fn(*a, **k)
    return r, time.perf_counter() - t0
