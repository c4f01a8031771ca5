"""Fast latency of search-space architectures: additive tables built once per device.

For a space whose blocks are independent given the resolution (OFA-MobileNetV3), the kernels of
block ``b`` with kernel ``k`` and expand ``e`` at resolution ``r`` are found once: a few covering
networks are exported at 224, their kernels detected and attributed to blocks by ONNX node name,
and re-keyed for every resolution through the spatial-size map of a shape-inferred copy. These
records are cached per (space, fusion rules). An architecture's latency is then a gather and a
sum over an integer matrix: hundreds of thousands of architectures a second. Other spaces use the
exact path (build, export, detect) with a per-arch cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from hwlat.ir import detect_kernels, load_onnx, torch_to_onnx, with_input_shape
from hwlat.kernels import parse_key, with_resolution

_BLOCK_RE = re.compile(r"^/0/(?:0\.)?(\d+)/")   # the OFA body is model[0][0]: /0/0.<j>/...
CACHE_VERSION = 3


def _cache_dir() -> Path:
    """$HWLAT_CACHE, else $HWLAT_HOME/cache, else ~/.hwlat/cache."""
    if os.environ.get("HWLAT_CACHE"):
        return Path(os.environ["HWLAT_CACHE"])
    home = os.environ.get("HWLAT_HOME")
    return (Path(home) if home else Path.home() / ".hwlat") / "cache"


def _rules_hash(rules) -> str:
    return hashlib.sha1(json.dumps(sorted(map(list, rules.fuse)) + sorted(rules.groups)).encode()).hexdigest()[:12]


def _remap(key: str, hmap: dict[int, int]) -> str:
    return with_resolution(parse_key(key), hmap).key


def _spatial_map(proto, shape) -> dict[int, int]:
    """Spatial size at 224 -> at ``shape``, read off a shape-inferred copy of the same graph."""
    def sizes(p):
        out = {}
        for vi in list(p.graph.value_info) + list(p.graph.input) + list(p.graph.output):
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            if len(dims) == 4:
                out[vi.name] = dims[2]
        return out

    a, b = sizes(proto), sizes(with_input_shape(proto, shape))
    hmap: dict[int, int] = {}
    for name, h in a.items():
        if name in b:
            if hmap.setdefault(h, b[name]) != b[name]:
                raise ValueError("spatial sizes do not map one to one")
    return hmap


def _strip(proto):
    """Drop large weights (shapes stay): kernel detection needs dims and small constants only."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for init in m.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n > 64:
            for f in ("raw_data", "float_data", "int64_data", "int32_data", "double_data"):
                init.ClearField(f)
            init.data_location = 0
    return m


def covering_proto(space, arch):
    """Canonical ONNX of a covering network, cached with its weights stripped."""
    import onnx

    path = _cache_dir() / "graphs" / (re.sub(r"[^A-Za-z0-9_.-]", "_", space.key(arch)) + ".onnx")
    if path.is_file():
        try:
            return onnx.load(str(path))
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt
            pass
    proto = _strip(load_onnx(torch_to_onnx(space.build(arch), space.input_shape(arch))))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return proto


def ofa_records(space, rules) -> list[list]:
    """[wi, ri, block(-1 = stem/head), ki, ei, key] for every kernel of the OFA space (cached)."""
    from hwlat.search.spaces import ofa as O

    widths = list(space.choices().get("w", [1.0]))
    cache = _cache_dir() / f"ofa-mbv3-v{CACHE_VERSION}-{_rules_hash(rules)}-w{'_'.join(map(str, widths))}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    B = O.N_BLOCKS
    records = []
    for wi, w in enumerate(widths):
        hmaps = None
        for ki, k in enumerate(O.KS):
            for ei, e in enumerate(O.EXPANDS):
                arch = space.parse({"ks": [k] * B, "e": [e] * B, "d": [O.MAX_DEPTH] * O.N_UNITS, "r": 224, "w": w})
                proto = covering_proto(space, arch)
                base = [(inst.nodes[0], inst.kernel.key) for inst in detect_kernels(proto, rules).kernels]
                if hmaps is None:
                    hmaps = {r: _spatial_map(proto, (1, 3, r, r)) for r in O.RESOLUTIONS}
                    # the remap must agree with real shape inference: check on one resolution
                    check = [i.kernel.key for i in detect_kernels(with_input_shape(proto, (1, 3, 160, 160)), rules).kernels]
                    if check != [_remap(key, hmaps[160]) for _, key in base]:
                        raise RuntimeError("OFA kernel remap disagrees with shape inference")
                for node, key in base:
                    m = _BLOCK_RE.match(node)
                    j = int(m.group(1)) if m else -1
                    blk = j - 2 if 2 <= j < 2 + B else -1
                    for ri, r in enumerate(O.RESOLUTIONS):
                        records.append([wi, ri, blk, ki, ei, key if r == 224 else _remap(key, hmaps[r])])
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(records))
    os.replace(tmp, cache)
    return records


class ExactTable:
    def __init__(self, space, predictor):
        self.space, self.predictor, self.cache = space, predictor, {}

    def predict(self, archs) -> np.ndarray:
        out = np.empty(len(archs))
        for i, a in enumerate(archs):
            a = self.space.parse(a)
            k = self.space.key(a)
            if k not in self.cache:
                self.cache[k] = self.predictor.arch_kernels_exact(self.space, a)
            out[i] = self.cache[k]
        return out


class OFATable:
    """net-latency and kernel-count tables indexed [w, r, block, k, e] plus fixed parts [w, r]."""

    def __init__(self, space, predictor):
        from hwlat.search.spaces import ofa as O

        self.space, self.predictor, self.O = space, predictor, O
        self.widths = list(space.choices().get("w", [1.0]))
        records = ofa_records(space, predictor.rules)
        shape = (len(self.widths), len(O.RESOLUTIONS), O.N_BLOCKS, len(O.KS), len(O.EXPANDS))
        self.net, self.cnt, self.mb, self.amb = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape)
        self.fixed_net = np.zeros(shape[:2])
        self.fixed_cnt = np.zeros(shape[:2])
        self.fixed_mb = np.zeros(shape[:2])
        self.fixed_amb = np.zeros(shape[:2])
        keys = sorted({r[-1] for r in records})
        raw, _, _ = predictor.kernel_latencies(keys)
        net = dict(zip(keys, predictor.correction.net(raw)))
        mb = {k: predictor.cold_mb(parse_key(k)) for k in keys}
        amb = {k: predictor.act_mb(parse_key(k)) for k in keys}
        for wi, ri, blk, ki, ei, key in records:
            if blk >= 0:
                self.net[wi, ri, blk, ki, ei] += net[key]
                self.cnt[wi, ri, blk, ki, ei] += 1
                self.mb[wi, ri, blk, ki, ei] += mb[key]
                self.amb[wi, ri, blk, ki, ei] += amb[key]
            elif ki == 0 and ei == 0:   # stem and head are the same in every covering network
                self.fixed_net[wi, ri] += net[key]
                self.fixed_cnt[wi, ri] += 1
                self.fixed_mb[wi, ri] += mb[key]
                self.fixed_amb[wi, ri] += amb[key]
        self._k_lut = np.zeros(8, int)
        self._k_lut[list(O.KS)] = np.arange(len(O.KS))
        self._e_lut = np.zeros(8, int)
        self._e_lut[list(O.EXPANDS)] = np.arange(len(O.EXPANDS))

    def predict(self, archs) -> np.ndarray:
        return self.predictor.correction.apply(*self.parts(archs))

    def parts(self, archs):
        """(net kernel ms, kernel count, weight MB, activation MB) of each architecture, before correction."""
        O = self.O
        if isinstance(archs, np.ndarray):
            m = archs
        else:
            arch_t = type(self.space.parse(archs[0])) if len(archs) else None
            m = self.space.to_matrix(archs if all(type(a) is arch_t for a in archs)
                                     else [self.space.parse(a) for a in archs])
        B = O.N_BLOCKS
        ks, es = m[:, :B], m[:, B:2 * B]
        active = ks > 0
        ri = (m[:, 2 * B + O.N_UNITS] - O.RESOLUTIONS[0]) // 4
        wv = m[:, 2 * B + O.N_UNITS + 1]
        wi = np.zeros(len(m), int)
        for i, w in enumerate(self.widths):
            wi[wv == round(10 * w)] = i
        ki, ei = self._k_lut[ks], self._e_lut[es]
        b = np.arange(B)[None, :]
        net = (self.net[wi[:, None], ri[:, None], b, ki, ei] * active).sum(1) + self.fixed_net[wi, ri]
        cnt = (self.cnt[wi[:, None], ri[:, None], b, ki, ei] * active).sum(1) + self.fixed_cnt[wi, ri]
        mb = (self.mb[wi[:, None], ri[:, None], b, ki, ei] * active).sum(1) + self.fixed_mb[wi, ri]
        amb = (self.amb[wi[:, None], ri[:, None], b, ki, ei] * active).sum(1) + self.fixed_amb[wi, ri]
        return net, cnt, mb, amb


def table_for(space, predictor):
    if space.name == "ofa-mbv3":
        return OFATable(space, predictor)
    return ExactTable(space, predictor)


def space_kernel_keys(space, rules, seed: int = 0) -> list[str]:
    """Unique kernels of a space, resolutions covered coarse to fine (see profilers.sampling)."""
    from hwlat.profilers.sampling import bisection_order

    if space.name == "ofa-mbv3":
        from hwlat.search.spaces import ofa as O

        recs = [(O.RESOLUTIONS[ri], key) for _, ri, _, _, _, key in ofa_records(space, rules)]
    else:
        recs = []
        for a in space.sample(30, seed=seed):
            shape = space.input_shape(a)
            for inst in detect_kernels(load_onnx(torch_to_onnx(space.build(a), shape)), rules).kernels:
                recs.append((shape[-1], inst.kernel.key))
    by_r: dict[int, list[str]] = {}
    seen: set[str] = set()
    for r, key in recs:
        if key not in seen:
            seen.add(key)
            by_r.setdefault(r, []).append(key)
    rng = np.random.default_rng(seed)
    out = []
    for r in bisection_order(list(by_r)):
        keys = list(by_r[r])
        rng.shuffle(keys)
        out += keys
    return out
