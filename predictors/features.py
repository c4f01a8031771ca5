"""Kernel features that carry the physics: shapes, FLOPs, bytes moved, intensity, alignment.

Alignment starts at 4 channels: ONNX Runtime runs a convolution in its blocked layout (NCHWc)
only when its channels are a multiple of 4 (a lone 14x14 depthwise conv: 58 and 62 channels run
the generic NCHW path, 56, 60 and 116 the blocked one, 5-10x faster); without the feature, the
regressors priced ShuffleNet's 116-channel convs like the slow 58-channel ones (9x too high).
"""

from __future__ import annotations

import math

import numpy as np

from hwlat.kernels import Kernel, bytes_moved, flops, numel, param_count, parse_key, same_pad_total

FUSED_OPS = ("add", "relu", "relu6", "hswish", "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu", "clip", "split")
KINDS = ("bn", "conv", "dwconv", "gconv", "gemm", "se", "gap", "gmp", "maxpool", "avgpool", "add", "mul", "addc", "mulc",
         "concat", "catshuffle", "split", "slice", "shuffle", "reshape", "transpose", "pad", "softmax", "relu", "relu6", "hswish",
         "hsigmoid", "sigmoid", "silu", "tanh", "leakyrelu", "clip")

FEATURE_NAMES = (
    ["log_hin", "log_win", "log_cin", "log_hout", "log_cout", "k", "s", "log_g", "log_cin_per_g", "log_m",
     "n_inputs", "log_flops", "log_bytes", "log_params", "log_in_elems", "log_out_elems", "intensity",
     "cin_mod4", "cout_mod4", "cin_mod8", "cout_mod8", "cin_mod16", "cout_mod16", "cin_mod32", "cout_mod32", "batch", "pad_extra"]
    + [f"fused_{o}" for o in FUSED_OPS]
    + [f"kind_{k}" for k in KINDS]
)


def _l(x: float) -> float:
    return math.log2(max(float(x), 1.0))


def kernel_features(k: Kernel | str) -> list[float]:
    if isinstance(k, str):
        k = parse_key(k)
    x = k.inputs[0]
    hin, win, cin = (x[0], x[1], x[2]) if len(x) == 3 else (1, 1, x[-1] if x else 1)
    o = k.output
    hout, cout = (o[0], o[2]) if len(o) == 3 else (1, o[-1] if o else 1)
    g = k.attr("g", 1)
    f, b, p = flops(k), bytes_moved(k), param_count(k)
    fused = k.fused
    row = [
        _l(hin), _l(win), _l(cin), _l(hout), _l(cout), float(k.attr("k", 0)), float(k.attr("s", 0)), _l(g),
        _l(cin / max(g, 1)), _l(k.attr("m", 1)), float(len(k.inputs)), _l(f), _l(b), _l(p),
        _l(sum(numel(s) for s in k.inputs)), _l(numel(o)), f / max(b, 1.0),
        float(cin % 4 == 0), float(cout % 4 == 0), float(cin % 8 == 0), float(cout % 8 == 0), float(cin % 16 == 0), float(cout % 16 == 0),
        float(cin % 32 == 0), float(cout % 32 == 0), float(k.attr("b", 1)),
        float(k.attr("p", 0) and k.attr("p") - same_pad_total(hin, hout, k.attr("k", 1), k.attr("s", 1), k.attr("d", 1))),
    ]
    row += [float(fused.count(op)) for op in FUSED_OPS]
    kind = k.kind
    row += [float(kind == kk) for kk in KINDS]
    return row


def feature_matrix(keys) -> np.ndarray:
    return np.asarray([kernel_features(k) for k in keys], dtype=np.float32)
