"""The command line: JSON shapes of CONTRACT.md, exit status 2 with one clear line for bad input."""

import json
import subprocess
import sys

import pytest


def run(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "hwlat.cli", *args], capture_output=True, text=True, env=env, timeout=600)
    return p.returncode, p.stdout, p.stderr


def test_help_for_every_command():
    for cmd in ("backends", "profile", "measure", "predict", "validate", "compile", "search", "train-supernet"):
        rc, out, _ = run(cmd, "--help")
        assert rc == 0 and "usage" in out


def test_package_functions_stay_callable_after_their_modules_are_imported():
    # a submodule of the same name would replace the lazy function on `hwlat` once imported
    code = ("import importlib, hwlat\n"
            "for m in ('hwlat.api', 'hwlat.validation', 'hwlat.cli', 'hwlat.protocol', 'hwlat.store'):\n"
            "    importlib.import_module(m)\n"
            "names = [n for n in hwlat.__all__ if n != '__version__']\n"
            "bad = [n for n in names if not callable(getattr(hwlat, n))]\n"
            "print(len(names), bad)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] != "0" and p.stdout.strip().endswith("[]"), p.stdout


def test_backends_json():
    rc, out, _ = run("backends", "--json")
    assert rc == 0
    infos = {b["name"]: b for b in json.loads(out)["backends"]}
    assert infos["onnxruntime"]["available"] and infos["onnxruntime"]["version"]
    assert not infos["tensorrt"]["available"] and infos["tensorrt"]["reason"]


def test_measure_json(tiny_onnx):
    rc, out, err = run("measure", "--backend", "onnxruntime", "--threads", "1", str(tiny_onnx), "--json",
                       "--passes", "2")
    assert rc == 0, err
    d = json.loads(out)
    assert {"median_ms", "p10_ms", "p90_ms", "runs", "backend", "threads"} <= set(d)
    assert d["p10_ms"] <= d["median_ms"] <= d["p90_ms"] and d["runs"] > 0 and d["threads"] == 1


@pytest.mark.parametrize("args, message", [
    (("predict", "--device", "no-such-device", "MODEL"), "unknown device"),
    (("measure", "BAD"), "not a readable ONNX"),
    (("measure", "MISSING"), "not found"),
    (("measure", "--backend", "tensorrt", "MODEL"), "not available"),
    (("measure", "--backend", "nosuch", "MODEL"), "unknown backend"),
    (("profile", "--device", "d", "--budget-minutes", "0"), "budget"),
    (("profile", "--device", "bad name!"), "invalid device name"),
    (("compile", "BAD", "--backend", "onnxruntime", "--out", "OUT"), "not a readable ONNX"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_onnx, hwlat_home, args, message):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not onnx")
    subst = {"MODEL": str(tiny_onnx), "BAD": str(bad), "MISSING": str(tmp_path / "none.onnx"),
             "OUT": str(tmp_path / "out")}
    rc, out, err = run(*[subst.get(a, a) for a in args])
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert out == ""
    assert not (tmp_path / "out").exists()


def test_compile_onnxruntime(tmp_path, tiny_onnx):
    rc, out, err = run("compile", str(tiny_onnx), "--backend", "onnxruntime", "--out", str(tmp_path / "o"), "--json")
    assert rc == 0, err
    import onnxruntime as ort

    ort.InferenceSession(json.loads(out)["artifact"], providers=["CPUExecutionProvider"])
