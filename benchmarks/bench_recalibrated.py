"""Score profiled devices against a ground truth taken together with their calibration networks.

This host's memory-bound speed drifts by several percent over tens of minutes while compute-bound
kernels do not move (measured: the same 24 OFA calibration networks 8% slower in one profile than in
the one before, the reference kernel within 1%). A whole-model correction fitted during a profile
then carries that profile's state. Here the zoo and the device's calibration networks (the same
names and seeds as ``hwlat profile``) are measured in one interleaved set, the calibration
measurements replace the stored ones in a copy of each device, the predictor is refitted and scored.

    python benchmarks/bench_recalibrated.py onnxruntime ~/.hwlat/devices/my-cpu [more device dirs]
"""

import sys, json, shutil, tempfile, numpy as np
from pathlib import Path
import hwlat
from hwlat.store import DeviceStore
from hwlat.device import DeviceConfig
from hwlat.search import spaces
from hwlat.ir import torch_to_onnx
from hwlat.validate import measure_models, metrics, zoo_onnx
from hwlat.protocol import Measurement
from hwlat.predictors.fit import fit_device
tmp=Path(tempfile.mkdtemp()); cal=[]; keys={}
for sname,count in (("ofa-mbv3",24),("fbnet",8)):
    sp=spaces.get(sname)
    for i,a in enumerate(sp.sample(count, seed=1000)):
        n=f"{sname}-cal-{i:03d}"; p=tmp/f"{n}.onnx"; torch_to_onnx(sp.build(a), sp.input_shape(a), p)
        cal.append((n,sname,p)); keys[n]=sp.key(a)
zoo_dir=Path(tempfile.gettempdir())/"hwlat-zoo"; zoo_dir.mkdir(exist_ok=True)
zoo=zoo_onnx(zoo_dir, None, 20); fam={n:f for n,f,_ in zoo}
backend=sys.argv[1]
res=measure_models(zoo+cal, DeviceConfig("t",backend,threads=1), passes=3)
out_root=Path(tempfile.mkdtemp(prefix="hwlat-recal-"))
for src in sys.argv[2:]:
    dst=out_root/Path(src).name; shutil.rmtree(dst, ignore_errors=True); shutil.copytree(src,dst)
    st=DeviceStore(dst); st.conn.execute("DELETE FROM models"); st.conn.commit()
    for n,f,_ in cal: st.add_model_measurement(n, f, 0, Measurement(res[n],res[n],res[n],1), kernels=[keys[n]])
    fit_device(st); st.close()
    pred=hwlat.load_predictor(dst.name, lut_dir=str(dst.parent)); c=pred.correction
    rows=[(n, fam[n], res[n], pred.predict(zoo_dir/f"{n}.onnx")) for n,_,_ in zoo]
    m=metrics([r[2] for r in rows],[r[3] for r in rows])
    print(f"{src}: {c.terms} d={c.d_ms_per_mb:.4f} e={c.e_ms_per_mb:.4f} a={c.a:.3f} LOO {c.rmspe_after:.3f} | ALL RMSPE {100*m['rmspe']:.1f}% ±5% {100*m['acc_5pct']:.0f}% ±10% {100*m['acc_10pct']:.1f}% bias {m['bias']:.3f}")
    for f in sorted(set(fam.values())):
        sel=[r for r in rows if r[1]==f]; mm=metrics([r[2] for r in sel],[r[3] for r in sel])
        print(f"   {f:<14}{mm['n']:>3}{100*mm['rmspe']:>7.1f}%{100*mm['acc_10pct']:>5.0f}%{mm['bias']:>7.3f}")
