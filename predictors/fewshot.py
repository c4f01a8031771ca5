"""Mix latency bases into a new device's latency from a handful of its measurements.

A device measured on ~10 architectures cannot support a learned model of its own, but its latency
is, in log space, close to an affine mix of other devices' latencies (same kind of hardware,
same kernels) and of physical proxies (MACs, activation traffic, kernel count). A *basis* is one
such log-latency column. The default mix is non-negative least squares on every basis plus a free
intercept (stable with collinear bases; a device rarely gets *faster* where another gets slower).
Alternatives (the single best basis, standardised ridge, or a non-negative sum of physical costs
in milliseconds, for hardware unlike any reference device) replace it only when their
leave-one-out error on the measured samples is clearly lower, so nothing is tuned to a device.

All of it is a few small least-squares problems: milliseconds for 10 samples.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

RIDGE_STRENGTHS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SWITCH_MARGIN = 0.8
MAX_LOO = 30


def _fit_nnls(Z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    # the intercept enters as +1 and -1 columns so that NNLS leaves its sign free
    A = np.column_stack([Z, np.ones(len(y)), -np.ones(len(y))])
    w, _ = nnls(A, y, maxiter=50 * A.shape[1])
    return w[:-2], float(w[-2] - w[-1])


def _fit_single(Z: np.ndarray, y: np.ndarray, j: int) -> tuple[np.ndarray, float]:
    A = np.column_stack([np.ones(len(y)), Z[:, j]])
    c = np.linalg.lstsq(A, y, rcond=None)[0]
    w = np.zeros(Z.shape[1])
    w[j] = c[1]
    return w, float(c[0])


def _fit_ridge(Z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    mu, sd = Z.mean(0), Z.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    Zs = (Z - mu) / sd
    ym = y.mean()
    v = np.linalg.solve(Zs.T @ Zs + lam * np.eye(Z.shape[1]), Zs.T @ (y - ym))
    w = v / sd
    return w, float(ym - mu @ w)


def _folds(n: int) -> list[np.ndarray]:
    """Leave-one-out for a handful of samples; 10 folds (seeded) once there are many."""
    if n <= MAX_LOO:
        return [np.array([i]) for i in range(n)]
    return np.array_split(np.random.default_rng(0).permutation(n), 10)


def _loo_rmse(fit, Z: np.ndarray, y: np.ndarray) -> float:
    err = np.empty(len(y))
    for held in _folds(len(y)):
        keep = np.ones(len(y), bool)
        keep[held] = False
        w, b = fit(Z[keep], y[keep])
        err[held] = Z[held] @ w + b - y[held]
    return float(np.sqrt(np.mean(err ** 2)))


def _fit_additive(A: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, float]:
    """ms = a + A @ b with b >= 0, a >= 0: the roofline-like sum of costs, in linear space."""
    scale = np.where(A.max(0) > 0, A.max(0), 1.0)
    w, _ = nnls(np.column_stack([A / scale, np.ones(len(t))]), t, maxiter=50 * (A.shape[1] + 1))
    return w[:-1] / scale, float(w[-1])


def _loo_rmse_additive(A: np.ndarray, y: np.ndarray) -> float:
    err = np.empty(len(y))
    for held in _folds(len(y)):
        keep = np.ones(len(y), bool)
        keep[held] = False
        w, b = _fit_additive(A[keep], np.exp(y[keep]))
        err[held] = np.log(np.maximum(A[held] @ w + b, 1e-9)) - y[held]
    return float(np.sqrt(np.mean(err ** 2)))


def fit_mix(Z: np.ndarray, y: np.ndarray, names: list[str], additive: np.ndarray | None = None,
            additive_names: list[str] | None = None) -> dict:
    """The mix of bases ``Z`` (n, p, log ms) that best explains ``y`` (n, log ms).

    NNLS on every basis is the default; the single best basis, ridge, or (with ``additive``, positive
    per-arch costs in linear units such as MACs) a non-negative sum of costs in milliseconds replace
    it only when their leave-one-out error is clearly lower (by ``1 - SWITCH_MARGIN``): with 10
    samples a leave-one-out ranking of many candidates is itself noisy, so the prior needs evidence.
    Returns a JSON-able dict: ``kind``, ``choice``, ``bases``, ``weights``, ``intercept``,
    ``loo_rmse`` and the best candidates' leave-one-out errors.
    """
    Z, y = np.asarray(Z, np.float64), np.asarray(y, np.float64)
    n, p = Z.shape
    if n < 3:
        raise ValueError("a mix needs at least 3 measured architectures")
    fits: dict = {"nnls": _fit_nnls}
    for j in range(p):
        fits[f"single:{names[j]}"] = lambda a, b, j=j: _fit_single(a, b, j)
    for lam in RIDGE_STRENGTHS:
        fits[f"ridge:{lam:g}"] = lambda a, b, lam=lam: _fit_ridge(a, b, lam)
    scores = {name: _loo_rmse(fit, Z, y) for name, fit in fits.items()}
    if additive is not None:
        scores["additive"] = _loo_rmse_additive(np.asarray(additive, np.float64), y)
    best = min(scores, key=scores.get)
    if scores[best] >= SWITCH_MARGIN * scores["nnls"]:
        best = "nnls"
    top = {k: round(v, 6) for k, v in sorted(scores.items(), key=lambda kv: kv[1])[:8]}
    if best == "additive":
        w, b = _fit_additive(np.asarray(additive, np.float64), np.exp(y))
        return {"kind": "additive", "choice": best, "bases": list(additive_names or []),
                "weights": [float(x) for x in w], "intercept": b, "loo_rmse": scores[best],
                "candidates_loo_rmse": top}
    w, b = fits[best](Z, y)
    return {"kind": best.split(":")[0], "choice": best, "bases": list(names), "weights": [float(x) for x in w],
            "intercept": b, "loo_rmse": scores[best], "candidates_loo_rmse": top}


def apply_mix(mix: dict, Z: np.ndarray, additive: np.ndarray | None = None) -> np.ndarray:
    """Log-ms predictions of a mix from its bases ``Z`` (and ``additive`` costs for that kind)."""
    w = np.asarray(mix["weights"], np.float64)
    if mix["kind"] == "additive":
        return np.log(np.maximum(np.asarray(additive, np.float64) @ w + mix["intercept"], 1e-9))
    return np.asarray(Z, np.float64) @ w + mix["intercept"]
