"""The portable SoftPool file on OpenVINO (CPU plugin) beside ONNX Runtime, side by side.

For the cases of bench_ort.py (8 x 64 x 112 x 112 float32 with k2 s2 and k3 s2 p1, and a
3-D case), one SoftPool node exported to the ``portable`` target (the standard-op
decomposition, no poolexport node left) runs on OpenVINO at f32 (INFERENCE_PRECISION_HINT
pinned, as the parity check does) and on plain ONNX Runtime; each runtime's own
AveragePool on the same tensor and window is its baseline, and the ``ort`` file with
poolexport's library is the last column. Every column is timed in interleaved rounds
(best of ``--repeat``), so the ratios come from one run on the same machine load.

    python benchmarks/bench_openvino.py [--repeat 12] [--threads N] [--case SUBSTRING]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform

import numpy as np
import onnx
from onnx import TensorProto, helper

from bench_ort import CASES, interleaved


def one_node(op, attrs, shape, domain="poolexport"):
    """One pooling node with a static input shape (OpenVINO plans for the shape it is given)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["X"], ["Y"], domain=domain, **attrs)
    # opset 18: ONNX Runtime's AveragePool-19 takes a slower generic path (see bench_ort.py)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)]
    return helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets, ir_version=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="threads for every column (default: all cores)")
    ap.add_argument("--case", default=None, help="only the cases whose name contains this (e.g. '3-D')")
    args = ap.parse_args()

    import onnxruntime as ort
    import openvino as ov

    from poolexport import ort as pxort
    from poolexport.onnx.targets import apply_target

    threads = args.threads or os.cpu_count()
    core = ov.Core()
    ov_config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}

    def ort_options():
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see bench_ort.py
        return o

    def on_openvino(model):
        request = core.compile_model(core.read_model(model.SerializeToString()), "CPU", ov_config).create_infer_request()
        return lambda feed: request.infer(feed, share_inputs=True)[0]

    def on_ort(model, library=False):
        if library:
            session = pxort.session(model.SerializeToString(), options=ort_options())
        else:
            session = ort.InferenceSession(model.SerializeToString(), ort_options(), providers=["CPUExecutionProvider"])
        return lambda feed: session.run(None, feed)[0]

    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}, {threads} threads, "
          f"openvino {ov.__version__.split('-')[0]} (f32), onnxruntime {ort.__version__}; "
          f"best of {args.repeat} interleaved runs, ms")
    print("| case | OpenVINO AveragePool | OpenVINO portable SoftPool | ratio | ORT AveragePool "
          "| ORT portable SoftPool | ratio | ORT + library SoftPool | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, shape, attrs in CASES:
        if args.case and args.case not in name:
            continue
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {"X": x}
        avg = one_node("AveragePool", {**attrs, "count_include_pad": 0}, shape, domain="")
        soft = one_node("SoftPool", attrs, shape)
        portable = apply_target(onnx.ModelProto.FromString(soft.SerializeToString()), "portable")
        fns = {
            "ov avg": on_openvino(avg),
            "ov soft": on_openvino(portable),
            "ort avg": on_ort(avg),
            "ort soft": on_ort(portable),
            "lib soft": on_ort(apply_target(soft, "ort"), library=True),
        }
        # the same answers before timing: a benchmark of a wrong result is no benchmark
        np.testing.assert_allclose(fns["ov soft"](feed), fns["lib soft"](feed), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fns["ov avg"](feed), fns["ort avg"](feed), rtol=1e-5, atol=1e-6)
        t = {k: v * 1e3 for k, v in interleaved({k: (lambda f=f: f(feed)) for k, f in fns.items()}, args.repeat).items()}
        print(f"| {name} | {t['ov avg']:.1f} | {t['ov soft']:.1f} | {t['ov soft'] / t['ov avg']:.1f} "
              f"| {t['ort avg']:.1f} | {t['ort soft']:.1f} | {t['ort soft'] / t['ort avg']:.1f} "
              f"| {t['lib soft']:.1f} | {t['lib soft'] / t['ort avg']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
