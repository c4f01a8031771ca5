"""Physical features of search-space architectures, computed from their integer rows.

The space's own ``encode_matrix`` says *which* choices an architecture made (one-hots). This
module adds what those choices cost on the known macro skeleton: multiply-accumulates, activation
traffic and parameters per block and per stage, kernel counts, resolution. A tree model that sees
cost quantities can share what it learns between blocks and generalise to unseen combinations;
one that sees only one-hots has to memorise each of them.

Everything is table lookups over the integer matrix (``space.to_matrix``), so a hundred thousand
architectures take a few tens of milliseconds. ``proxies`` gives the few positive whole-network
quantities that serve as latency bases when a device has only a handful of measurements.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def physical_names(space) -> list[str]:
    fn = _NAMES.get(space.name)
    return fn() if fn else []


def physical_features(space, m: np.ndarray) -> np.ndarray:
    """(n, F) float32 cost features of integer rows ``m``; (n, 0) for a space without a skeleton here."""
    fn = _FEATURES.get(space.name)
    if fn is None:
        return np.zeros((len(m), 0), np.float32)
    return fn(space, np.asarray(m))


PROXY_NAMES = ("macs", "act_traffic", "n_kernels")


def proxies(space, m: np.ndarray) -> np.ndarray | None:
    """(n, 3) positive whole-network quantities (MACs, activation traffic, kernel count), or None."""
    names = physical_names(space)
    if not names:
        return None
    x = physical_features(space, m)
    cols = [names.index(f"total_{p}") for p in PROXY_NAMES]
    return np.maximum(x[:, cols].astype(np.float64), 1e-9)


# -- OFA MobileNetV3 -----------------------------------------------------------------------------
def _ofa_names() -> list[str]:
    from hwlat.search.spaces import ofa

    nb, nu = ofa.N_BLOCKS, ofa.N_UNITS
    return ([f"ks{b}" for b in range(nb)] + [f"e{b}" for b in range(nb)] + [f"macs_b{b}" for b in range(nb)]
            + [f"{q}_u{u}" for q in ("macs", "traffic", "params") for u in range(nu)]
            + ["r", "n_blocks", "total_macs", "total_act_traffic", "total_params", "total_n_kernels"])


@lru_cache(maxsize=8)
def _ofa_tables(w10: int):
    """Per block, indexed by ``8 * e + k`` (0 for a skipped block): the coefficients of its costs.

    MACs = hin^2 * A + hout^2 * B + C, traffic = hin^2 * TA + hout^2 * TB, params P, kernels K; hin is
    the block's input resolution, hout its output one (``stage_in``/``stage_out`` index them).
    """
    from hwlat.search.spaces import make_divisible, ofa

    ch = ofa._channels(w10 / 10.0)
    nb = ofa.N_BLOCKS
    A, B, C, TA, TB, P, K = (np.zeros((nb, 64), np.float32) for _ in range(7))
    stage_in, stage_out = np.zeros(nb, int), np.zeros(nb, int)
    cin = ch["first"]
    for u, (_, _stride, _act, has_se) in enumerate(ofa.UNITS):
        cout = ch["units"][u]
        for i in range(ofa.MAX_DEPTH):
            b = ofa.MAX_DEPTH * u + i
            c_in = cin if i == 0 else cout
            stage_in[b], stage_out[b] = (u if i == 0 else u + 1), u + 1   # into [h_stem, h_u0, ..., h_u4]
            for e in ofa.EXPANDS:
                mid = make_divisible(round(c_in * e), 8)
                se = make_divisible(mid // 4, 8) if has_se else 0
                for k in ofa.KS:
                    j = 8 * e + k
                    A[b, j], B[b, j], C[b, j] = c_in * mid / 1e6, mid * (k * k + cout) / 1e6, 2 * mid * se / 1e6
                    TA[b, j], TB[b, j] = (c_in + 2 * mid) / 1e6, (2 * mid + cout) / 1e6
                    P[b, j] = (mid * (c_in + k * k + cout) + 2 * mid * se) / 1e3
                    K[b, j] = 3 + 2 * (se > 0)               # expand, depthwise, project (+ SE pair)
        cin = cout
    flat = lambda t: t.reshape(-1)  # noqa: E731
    stem_hw = (27 * ch["stem"] + ch["stem"] * (9 + ch["first"])) / 1e6, (3 + 4 * ch["stem"]) / 1e6
    head = ch["units"][-1] * ch["final"] / 1e6, (ch["final"] * ch["last"] + ch["last"] * ofa.NUM_CLASSES) / 1e6
    params_fixed = (ch["final"] * ch["last"] + ch["last"] * ofa.NUM_CLASSES) / 1e3
    return tuple(map(flat, (A, B, C, TA, TB, P, K))), stage_in, stage_out, stem_hw, head, params_fixed


def _ofa_features(space, m: np.ndarray) -> np.ndarray:
    from hwlat.search.spaces import ofa

    nb, nu, d0, ri, wi = ofa.N_BLOCKS, ofa.N_UNITS, ofa._D0, ofa._R, ofa._W
    n = len(m)
    out = np.empty((n, len(_ofa_names())), np.float32)
    widths = np.unique(m[:, wi])
    for w10 in widths:
        rows = slice(None) if len(widths) == 1 else np.flatnonzero(m[:, wi] == w10)
        sub = m[rows]
        ns = len(sub)
        (A, B, C, TA, TB, P, K), stage_in, stage_out, stem_hw, head, params_fixed = _ofa_tables(int(w10))
        ks = sub[:, :nb]
        idx = (sub[:, nb:d0].astype(np.int32) * 8 + ks) + (np.arange(nb, dtype=np.int32) * 64)
        r = sub[:, ri].astype(np.float32)
        h = [np.ceil(r / 2)]
        for _, stride, *_ in ofa.UNITS:
            h.append(np.ceil(h[-1] / stride))
        hw = np.stack(h, 1) ** 2                              # (n, 6) pixels per stage
        hin2, hout2 = hw[:, stage_in], hw[:, stage_out]
        macs = hin2 * A[idx] + hout2 * B[idx] + C[idx]
        traffic = hin2 * TA[idx] + hout2 * TB[idx]
        params = P[idx]
        kernels = K[idx]
        o = out if len(widths) == 1 else np.empty((ns, out.shape[1]), np.float32)
        o[:, :nb] = ks
        o[:, nb:2 * nb] = sub[:, nb:d0]
        o[:, 2 * nb:3 * nb] = macs
        c = 3 * nb
        for q in (macs, traffic, params):
            o[:, c:c + nu] = q.reshape(ns, nu, ofa.MAX_DEPTH).sum(2)
            c += nu
        o[:, c] = r
        o[:, c + 1] = (kernels > 0).sum(1)
        o[:, c + 2] = o[:, 3 * nb:3 * nb + nu].sum(1) + hw[:, 0] * stem_hw[0] + hw[:, -1] * head[0] + head[1]
        o[:, c + 3] = o[:, 3 * nb + nu:3 * nb + 2 * nu].sum(1) + hw[:, 0] * stem_hw[1]
        o[:, c + 4] = o[:, 3 * nb + 2 * nu:3 * nb + 3 * nu].sum(1) + params_fixed
        o[:, c + 5] = kernels.sum(1) + 6                       # stem, first block, final conv, pool, head
        if o is not out:
            out[rows] = o
    return out


# -- NAS-Bench-201 -------------------------------------------------------------------------------
_NB_MACS = (9.0, 1.0)      # nor_conv_3x3, nor_conv_1x1: MACs per C*C*H*W (the same in every stage)
# the fixed skeleton: stem conv3x3 3->16 at 32x32, two ResNet reduction blocks (conv3x3/s2, conv3x3,
# avgpool + conv1x1 shortcut), classifier; in millions of MACs / activation elements, and kernels
_NB_FIXED_MACS = (32 * 32 * 27 * 16 + 16 * 16 * (144 * 32 + 288 * 32 + 16 * 32)
                  + 8 * 8 * (288 * 64 + 576 * 64 + 32 * 64) + 64 * 10) / 1e6
_NB_FIXED_TRAFFIC = (32 * 32 * (3 + 2 * 16) + 16 * 16 * (16 + 6 * 32) + 8 * 8 * (32 + 6 * 64)) / 1e6
_NB_FIXED_KERNELS = 12


def _nb_names() -> list[str]:
    from hwlat.search.spaces import nasbench201 as nb

    return ([f"n_{op}" for op in nb.OPS] + ["live_edges", "adds_all", "adds_live", "macs_live",
                                             "total_macs", "total_act_traffic", "total_n_kernels"])


@lru_cache(maxsize=1)
def _nb_table() -> np.ndarray:
    """Features of every cell by its base-5 code (15,625 rows)."""
    import itertools

    from hwlat.search.spaces import nasbench201 as nb

    pixels_ch = sum(c * c * (32 // 2 ** s) ** 2 for s, c in enumerate(nb.CHANNELS))   # C*C*H*W summed
    act = sum(c * (32 // 2 ** s) ** 2 for s, c in enumerate(nb.CHANNELS))            # C*H*W summed
    cells = nb.CELLS_PER_STAGE
    table = np.zeros((len(nb.OPS) ** nb.N_EDGES, len(_nb_names())), np.float32)
    for code, ops in enumerate(itertools.product(range(len(nb.OPS)), repeat=nb.N_EDGES)):
        live = nb._live_edges(ops)
        row = table[code]
        for op in ops:
            row[op] += 1
        row[5] = sum(live)
        fan_all = [sum(1 for k, (d, _) in enumerate(nb.EDGES) if d == node and ops[k] != 0) for node in (1, 2, 3)]
        fan_live = [sum(1 for k, (d, _) in enumerate(nb.EDGES) if d == node and live[k]) for node in (1, 2, 3)]
        row[6] = sum(max(f - 1, 0) for f in fan_all)
        row[7] = sum(max(f - 1, 0) for f in fan_live)
        per_cell = lambda use: sum(_NB_MACS[0] if ops[k] == 3 else _NB_MACS[1] if ops[k] == 2 else 0  # noqa: E731
                                   for k in range(nb.N_EDGES) if use[k])
        row[8] = per_cell(live) * pixels_ch * cells / 1e6
        row[9] = per_cell([True] * nb.N_EDGES) * pixels_ch * cells / 1e6 + _NB_FIXED_MACS
        # every non-identity edge reads and writes one activation; node sums read their inputs
        row[10] = (2 * sum(1 for op in ops if op not in (0, 1)) + row[6] + 1) * act * cells / 1e6 + _NB_FIXED_TRAFFIC
        row[11] = (sum(1 for op in ops if op != 1) + row[6]) * 3 * cells + _NB_FIXED_KERNELS
    return table


def _nb_features(space, m: np.ndarray) -> np.ndarray:
    return _nb_table()[space._codes(m)]


# -- FBNet ---------------------------------------------------------------------------------------
def _fb_names() -> list[str]:
    from hwlat.search.spaces import fbnet

    nl = fbnet.N_LAYERS
    return ([f"k{i}" for i in range(nl)] + [f"e{i}" for i in range(nl)] + [f"g{i}" for i in range(nl)]
            + [f"macs_l{i}" for i in range(nl)] + [f"macs_s{s}" for s in range(len(fbnet.STAGES))]
            + [f"n_{op}" for op in fbnet.OPS] + ["total_macs", "total_act_traffic", "total_n_kernels"])


@lru_cache(maxsize=1)
def _fb_tables():
    """(layer, op) -> k, e, g, MACs (millions), activation traffic (millions), kernels; stage of each layer."""
    from hwlat.search.spaces import fbnet

    nl, no = fbnet.N_LAYERS, len(fbnet.OPS)
    k, e, g, traffic, kern = (np.zeros((nl, no)) for _ in range(5))
    h = fbnet.RESOLUTION // 2
    for li, (cin, cout, s) in enumerate(fbnet.layer_plan()):
        ho = -(-h // s)
        for j, op in enumerate(fbnet.OPS):
            p = fbnet.op_params(op)
            if p is None:
                identity = cin == cout and s == 1
                traffic[li, j] = 0 if identity else h * h * cin + ho * ho * cout
                kern[li, j] = 0 if identity else 1
                continue
            k[li, j], e[li, j], g[li, j] = p
            mid = cin * p[1]
            traffic[li, j] = h * h * (cin + 2 * mid) + ho * ho * (2 * mid + cout)
            kern[li, j] = 3 + (p[2] > 1)                      # + channel shuffle
        h = ho
    stage = np.repeat(np.arange(len(fbnet.STAGES)), [n for _, n, _ in fbnet.STAGES])
    f32 = lambda t: t.astype(np.float32)  # noqa: E731
    return f32(k), f32(e), f32(g), f32(fbnet._MACS / 1e6), f32(traffic / 1e6), f32(kern), stage


def _fb_features(space, m: np.ndarray) -> np.ndarray:
    from hwlat.search.spaces import fbnet

    m = np.asarray(m, dtype=np.int64)
    n, nl, ns = len(m), fbnet.N_LAYERS, len(fbnet.STAGES)
    k, e, g, macs_t, traffic_t, kern_t, stage = _fb_tables()
    layer = np.arange(nl)[None, :]
    macs = macs_t[layer, m]
    out = np.empty((n, len(_fb_names())), np.float32)
    out[:, :nl], out[:, nl:2 * nl], out[:, 2 * nl:3 * nl] = k[layer, m], e[layer, m], g[layer, m]
    out[:, 3 * nl:4 * nl] = macs
    c = 4 * nl
    for s in range(ns):
        out[:, c + s] = macs[:, stage == s].sum(1)
    c += ns
    no = len(fbnet.OPS)
    out[:, c:c + no] = np.bincount((m + no * np.arange(n)[:, None]).ravel(), minlength=n * no).reshape(n, no)
    c += len(fbnet.OPS)
    out[:, c] = macs.sum(1) + fbnet._FIXED_MACS / 1e6
    out[:, c + 1] = traffic_t[layer, m].sum(1)
    out[:, c + 2] = kern_t[layer, m].sum(1) + 4                # stem, head conv, pool, classifier
    return out


_NAMES = {"ofa-mbv3": _ofa_names, "nasbench201": _nb_names, "fbnet": _fb_names}
_FEATURES = {"ofa-mbv3": _ofa_features, "nasbench201": _nb_features, "fbnet": _fb_features}
