"""The `hwlat` command: a thin layer over the Python API.

Exit status: 0 success, 2 bad input or unavailable backend (one line on stderr), 1 internal error,
130 interrupted (the store is consistent; run again to resume).
"""

from __future__ import annotations

import argparse
import json
import sys


def _emit(obj, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=_jsonable) + "\n")
    else:
        print(text)


def _jsonable(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _shape(text):
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must look like 1,3,224,224 (got {text!r})") from None


def _target(text):
    if text is None:
        return None
    t = text.strip()
    if t.startswith("{"):
        try:
            return json.loads(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--target is not valid JSON: {text!r}") from None
    return t


def _add_backend_opts(p, with_device_opts=True):
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime | litert | tvm | tensorrt")
    p.add_argument("--threads", type=int, default=1, help="threads the runtime may use (default 1)")
    p.add_argument("--target", type=_target, default=None,
                   help="backend target, e.g. TVM '{\"kind\": \"llvm\", \"mcpu\": \"cortex-a76\"}'")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    if with_device_opts:
        p.add_argument("--rpc-tracker", default=None, help="HOST:PORT of a TVM RPC tracker")
        p.add_argument("--rpc-key", default=None, help="device key registered with the tracker")
    p.add_argument("--tune-trials", type=int, default=None, help="TVM MetaSchedule trials per kernel (0 = untuned)")


def _options(args) -> dict:
    opts = {}
    if getattr(args, "tune_trials", None) is not None:
        opts["tune_trials"] = int(args.tune_trials)
    return opts


def cmd_backends(args) -> int:
    from hwlat.api import backends

    infos = backends()
    lines = []
    for b in infos:
        status = f"available  {b['version']}" if b["available"] else f"unavailable: {b['reason']}"
        lines.append(f"{b['name']:<12} {status}")
        for k, v in (b.get("details") or {}).items():
            if b["available"]:
                lines.append(f"{'':<12}   {k}: {v}")
    _emit({"backends": infos}, args.json, "\n".join(lines))
    return 0


def cmd_profile(args) -> int:
    from hwlat.api import profile

    dev = profile(device=args.device, backend=args.backend, threads=args.threads, spaces=args.space or [],
                  models=args.models, budget_minutes=args.budget_minutes, lut_dir=args.lut_dir, target=args.target,
                  rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, precision=args.precision,
                  options=_options(args), prior=args.prior, progress=not args.json,
                  detect_fusion=not args.no_fusion_detection, adaptive=not args.no_adaptive, passes=args.passes)
    s = dev.summary
    corr = s.get("fit", {}).get("correction", {})
    text = (f"device {dev.name}: {s['kernels_measured']} kernels in the LUT ({s['measurements']} measurements this run, "
            f"{s['errors']} errors), {s['models_measured']} whole-model measurements, {s['minutes']:.1f} min"
            + ("; budget reached: run again to measure more" if s["budget_exhausted"] else "")
            + f"\nstore: {dev.path}"
            + (f"\nwhole-model correction '{corr.get('terms', '')}': a={corr.get('a', 1):.3f} "
               f"d={corr.get('d_ms_per_mb', 0):.4f}ms/weight-MB e={corr.get('e_ms_per_mb', 0):.4f}ms/activation-MB "
               + (f"g={corr['g_ms_per_mb2'] * 1e3:.4f}ms/weight-MB per GB of weights (to {corr.get('g_cap_mb', 0):.0f} MB) "
                  if corr.get("g_ms_per_mb2") else "")
               + f"(RMSPE on calibration archs {100 * (corr.get('rmspe_before') or 0):.1f}% "
               f"-> {100 * (corr.get('rmspe_after') or 0):.1f}% leave-one-out)" if corr.get("fitted_on") else "")
            + (f"\npredictions x{corr['pass_scale']:.3f}: a measurement's median pass over the fastest pass the LUT keeps"
               if corr.get("pass_scale", 1.0) != 1.0 else ""))
    curve = [c for c in s.get("curve", []) if "rmspe" in c]
    if curve:
        text += "\nheld-out error on the calibration architectures as profiling went on:"
        text += "\n  minutes  kernels  RMSPE   within ±10%  within ±5%"
        for c in curve:
            text += (f"\n  {c['minutes']:>7.1f}  {c['kernels']:>7}  {100 * c['rmspe']:>5.1f}%  "
                     f"{100 * c['acc_10pct']:>10.0f}%  {100 * c['acc_5pct']:>9.0f}%")
    _emit({"device": dev.name, "path": str(dev.path), **s}, args.json, text)
    return 0


def cmd_measure(args) -> int:
    from hwlat.api import measure

    m = measure(args.model, backend=args.backend, threads=args.threads, input_shape=args.input_shape,
                target=args.target, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key, precision=args.precision,
                passes=args.passes, options=_options(args))
    d = {"median_ms": m.median_ms, "p10_ms": m.p10_ms, "p90_ms": m.p90_ms, "runs": m.runs,
         "backend": m.backend, "threads": m.threads, "passes": args.passes}
    _emit(d, args.json, f"{args.model}: median {m.median_ms:.3f} ms (p10 {m.p10_ms:.3f}, p90 {m.p90_ms:.3f}; "
                        f"{m.runs} runs on {m.backend}, {m.threads} thread(s))")
    return 0


def cmd_predict(args) -> int:
    from hwlat.api import load_predictor

    p = load_predictor(args.device, lut_dir=args.lut_dir)
    b = p.breakdown(args.model, input_shape=args.input_shape)
    if args.json:
        if not args.breakdown:
            b = {**b, "kernels": b["kernels"]}
        _emit(b, True, "")
        return 0
    lines = [f"{args.model} on {args.device}: {b['latency_ms']:.3f} ms (predicted)"]
    if args.breakdown:
        n_model = sum(k["source"] == "model" for k in b["kernels"])
        lines.append(f"{len(b['kernels'])} kernels: {len(b['kernels']) - n_model} from the LUT, {n_model} estimated by "
                     f"regressors")
        for k in b["kernels"]:
            src = "lut" if k["source"] == "lut" else f"model({k.get('regressor', '')})"
            lines.append(f"  {k['latency_ms'] * 1e3:9.1f} us  {src:<16} {k['key']}")
    _emit(b, False, "\n".join(lines))
    return 0


def cmd_validate(args) -> int:
    from hwlat.validation import validate

    def prog(msg):
        if msg and not args.json:
            print(f"  {msg}", file=sys.stderr)

    r = validate(args.device, lut_dir=args.lut_dir, models_dir=args.models, passes=args.passes, plot=args.plot,
                 families=args.family or None, ofa_count=args.ofa_count, progress=prog,
                 drift=not args.no_drift_probe)
    lines = [f"{'model':<28}{'measured':>10}{'predicted':>11}{'error':>8}"]
    for m in r["models"]:
        lines.append(f"{m['name']:<28}{m['measured_ms']:>10.3f}{m['predicted_ms']:>11.3f}{100 * m['error']:>7.1f}%")
    lines.append("")
    lines.append(f"{'family':<16}{'n':>4}{'RMSPE':>8}{'±5%':>7}{'±10%':>7}")
    for fam, f in r["families"].items():
        lines.append(f"{fam:<16}{f['n']:>4}{100 * f['rmspe']:>7.1f}%{100 * f['acc_5pct']:>6.0f}%{100 * f['acc_10pct']:>6.0f}%")
    lines.append(f"{'all':<16}{r['n_models']:>4}{100 * r['rmspe']:>7.1f}%{100 * r['acc_5pct']:>6.0f}%"
                 f"{100 * r['acc_10pct']:>6.0f}%   Spearman {r['spearman']:.3f}")
    if r.get("drift"):
        d, c = r["drift"], r["drift_corrected"]
        lines.append(f"device speed now / when profiled: {d['speed_ratio']:.3f} ({d['kernels']} kernels re-measured); "
                     f"predictions x{d['speed_ratio']:.3f}: RMSPE {100 * c['rmspe']:.1f}%, ±5% {100 * c['acc_5pct']:.0f}%, "
                     f"±10% {100 * c['acc_10pct']:.0f}%")
    if args.plot:
        lines.append(f"plot: {args.plot}")
    _emit(r, args.json, "\n".join(lines))
    return 0


def cmd_compile(args) -> int:
    from hwlat.api import compile as compile_

    path = compile_(args.model, backend=args.backend, out=args.out, target=args.target, precision=args.precision,
                    input_shape=args.input_shape, device=args.device, lut_dir=args.lut_dir, options=_options(args))
    _emit({"artifact": str(path), "backend": args.backend}, args.json, f"wrote {path}")
    return 0


def cmd_devices(args) -> int:
    from hwlat.store import list_devices

    devs = list_devices(args.lut_dir)
    _emit({"devices": devs}, args.json, "\n".join(devs) if devs else "no devices profiled yet")
    return 0


def cmd_not_yet(args) -> int:
    from hwlat.errors import HwlatError

    raise HwlatError(f"'hwlat {args.cmd}' is not available in this version yet (it arrives with the search "
                     f"issues); use hwlat.search.spaces and hwlat.load_predictor(...).predict_many meanwhile")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hwlat", description="Hardware-aware latency modeling and compilation.")
    ap.add_argument("--version", action="version", version="hwlat 0.1.0")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("backends", help="which backends can run here, their versions, why not")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_backends)

    p = sub.add_parser("profile", help="measure a device's kernels into its store and fit its predictor")
    _add_backend_opts(p)
    p.add_argument("--device", required=True, help="device name, e.g. x86-ort-1t")
    p.add_argument("--space", action="append", help="search space whose kernels to cover (repeatable): ofa-mbv3, ...")
    p.add_argument("--models", default=None, help="folder of ONNX models whose kernels to measure first")
    p.add_argument("--budget-minutes", type=float, default=10.0)
    p.add_argument("--lut-dir", default=None, help="default $HWLAT_HOME/devices or ~/.hwlat/devices")
    p.add_argument("--prior", type=int, default=1200, help="broad kernel sample size (default 1200)")
    p.add_argument("--no-fusion-detection", action="store_true", help="use the backend's default fusion rules")
    p.add_argument("--no-adaptive", action="store_true", help="stop after the planned kernels (no adaptive rounds)")
    p.add_argument("--passes", type=int, default=None, help="interleaved passes per kernel (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profile)

    p = sub.add_parser("measure", help="end-to-end latency of one model (the ground truth)")
    _add_backend_opts(p)
    p.add_argument("model")
    p.add_argument("--input-shape", type=_shape, default=None, help="static input shape, e.g. 1,3,224,224")
    p.add_argument("--passes", type=int, default=3, help="interleaved passes, fresh session each (default 3)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_measure)

    p = sub.add_parser("predict", help="predicted latency from the device's stored data (runs nothing)")
    p.add_argument("--device", required=True)
    p.add_argument("--lut-dir", default=None)
    p.add_argument("model")
    p.add_argument("--input-shape", type=_shape, default=None)
    p.add_argument("--breakdown", action="store_true", help="per-kernel latencies and their source")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("validate", help="measure held-out models and compare with predictions")
    p.add_argument("--device", required=True)
    p.add_argument("--lut-dir", default=None)
    p.add_argument("--models", default=None, help="folder of ONNX models (default: the built-in validation zoo)")
    p.add_argument("--family", action="append", help="zoo families to use (repeatable; default all)")
    p.add_argument("--ofa-count", type=int, default=20)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--no-drift-probe", action="store_true",
                   help="do not re-measure a few kernels to report how the device's speed moved since profiling")
    p.add_argument("--plot", default=None, help="write a predicted-vs-measured PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("compile", help="write a deployable artifact of a model for a backend")
    p.add_argument("model")
    _add_backend_opts(p, with_device_opts=False)
    p.add_argument("--out", required=True)
    p.add_argument("--input-shape", type=_shape, default=None)
    p.add_argument("--device", default=None, help="use this device's tuning records (TVM)")
    p.add_argument("--lut-dir", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("devices", help="list profiled and shipped devices")
    p.add_argument("--lut-dir", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_devices)

    for name, hlp in (("train-supernet", "train a once-for-all supernet"),
                      ("search", "device-tailored models within latency budgets")):
        p = sub.add_parser(name, help=f"{hlp} (not available yet)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=cmd_not_yet)
    return ap


def main(argv=None) -> int:
    from hwlat.errors import HwlatError

    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except HwlatError as e:
        print(f"hwlat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwlat: interrupted; every finished measurement is stored: run the same command again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
