"""Accuracy of the CPU SoftPool kernel's exp (custom_ops/ort/cpu_simd.h), measured exhaustively.

The shared-shift SoftPool kernel evaluates exp only on [-60, 0] (each block's beta*x minus
its maximum, with a range of at most 60). This runs every float32 of that interval (about
1.1e9 values) through the library's ``poolexport_cpu_exp_shifted`` on each CPU path this
machine has (POOLEXPORT_CPU_ISA) and prints the largest error against float64 exp, in ulp
of the exact value and relative. tests/test_cpu_isa.py checks a dense sample of the same
interval against the 2-ulp bound on every run.

    python benchmarks/exp_error.py [--paths avx2,portable]
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform

import numpy as np


def measure(lib, chunk=1 << 24):
    top = int(np.float32(-60.0).view(np.uint32))
    worst_ulp, worst_rel, at = 0.0, 0.0, 0.0
    for b0 in range(0x80000000, top + 1, chunk):
        t = np.arange(b0, min(b0 + chunk, top + 1), dtype=np.uint32).view(np.float32)
        out = np.empty_like(t)
        lib.poolexport_cpu_exp_shifted(t.ctypes.data, out.ctypes.data, t.size)
        want = np.exp(t.astype(np.float64))
        err = np.abs(out.astype(np.float64) - want)
        ulps = err / np.ldexp(1.0, np.frexp(want)[1] - 24)
        i = int(np.argmax(ulps))
        if ulps[i] > worst_ulp:
            worst_ulp, at = float(ulps[i]), float(t[i])
        worst_rel = max(worst_rel, float(np.max(err / want)))
    return worst_ulp, worst_rel, at


def main():
    from poolexport import ort as pxort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default="avx512,avx2,portable", help="CPU paths to measure (those this CPU has)")
    args = ap.parse_args()
    lib = ctypes.CDLL(pxort.get_library_path())
    lib.poolexport_cpu_isa.restype = ctypes.c_char_p
    lib.poolexport_cpu_exp_shifted.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    print(f"# {datetime.date.today()}  {platform.machine()}; every float32 in [-60, 0] against float64 exp")
    print("| path | max error (ulp) | at t = | max relative error |")
    print("| --- | ---: | ---: | ---: |")
    for path in args.paths.split(","):
        os.environ["POOLEXPORT_CPU_ISA"] = path
        ran = lib.poolexport_cpu_isa().decode()
        if ran != path:
            print(f"| {path} | not on this CPU (runs {ran}) | | |")
            continue
        ulp, rel, at = measure(lib)
        print(f"| {path} | {ulp:.3f} | {at:.7g} | {rel:.3g} |", flush=True)


if __name__ == "__main__":
    main()
