"""Benchmark of the adaPool family's ONNX Runtime CPU kernels against SoftPool's kernel on
the same tensor and window, float32 and float16, measured side by side (interleaved rounds,
best of ``--repeat``), so every ratio compares times taken under the same load.

Columns per case: SoftPool (the library's kernel), EdscwPool, IdwPool and AdaPool (with a
Beta of the output's spatial shape), ms; ratio = op / SoftPool (target <= 1.5); and the
ops' decompositions (plain ONNX Runtime, the ``ort`` file without the library; float32).

    python benchmarks/bench_ada_pool.py [--repeat 10] [--threads 1] [--dtypes float32,float16]
                                        [--no-decomposition] [--baseline-library PATH]

``--baseline-library`` also times the three ops from another build of the custom-op library
(e.g. before a kernel change), in the same interleaved rounds, and prints both ratios.
"""
from __future__ import annotations

import argparse

import numpy as np
from bench_ort import interleaved  # the script's folder is on sys.path
from onnx import TensorProto, helper

CASES = [
    ("2-D k2 s2", (8, 64, 56, 56), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])),
    ("2-D k3 s2 p1", (8, 64, 56, 56), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("3-D k2 s2", (2, 16, 16, 28, 28), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2], pads=[0] * 6)),
]
TARGET = 1.5


ELEM = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def one_node(op, a, with_beta=False, dtype="float32"):
    k = len(a["kernel_shape"])
    full = dict(dilations=[1] * k, ceil_mode=0, auto_pad="NOTSET", **a)
    inputs = [helper.make_tensor_value_info("X", ELEM[dtype], None)]
    if with_beta:
        inputs.append(helper.make_tensor_value_info("Beta", ELEM[dtype], None))
    node = helper.make_node(op, [i.name for i in inputs], ["Y"], domain="poolexport", **full)
    graph = helper.make_graph([node], op, inputs, [helper.make_tensor_value_info("Y", ELEM[dtype], None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10)


def main() -> None:
    import onnxruntime as ort

    from poolexport import ort as pxort
    from poolexport.onnx import decompositions

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--no-decomposition", action="store_true")
    ap.add_argument("--baseline-library", help="another build of the library, timed side by side")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")

    def options():
        o = ort.SessionOptions()
        o.intra_op_num_threads = args.threads
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return o

    print(f"{', '.join(dtypes)}; {args.threads} thread(s), best of {args.repeat} interleaved rounds (a shared "
          "machine: compare ratios, not times)")
    for name, shape, a in CASES:
        for dtype in dtypes:
            x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
            out = [(n + 2 * p - k) // s + 1
                   for n, k, s, p in zip(shape[2:], a["kernel_shape"], a["strides"], a["pads"])]
            beta = np.random.default_rng(1).uniform(0, 1, out).astype(dtype)
            fns = {}
            for op in ("SoftPool", "EdscwPool", "IdwPool", "AdaPool"):
                model = one_node(op, a, op == "AdaPool", dtype)
                feed = {"X": x, "Beta": beta} if op == "AdaPool" else {"X": x}
                sess = pxort.session(model.SerializeToString(), options=options())
                fns[op] = (lambda s, f: lambda: s.run(None, f))(sess, feed)
                if args.baseline_library:
                    o = options()
                    o.register_custom_ops_library(args.baseline_library)
                    base = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
                    fns[op + " baseline"] = (lambda s, f: lambda: s.run(None, f))(base, feed)
                if op != "SoftPool" and dtype == "float32" and not args.no_decomposition:
                    model.functions.extend(decompositions.functions([op]))
                    plain = ort.InferenceSession(model.SerializeToString(), options(),
                                                 providers=["CPUExecutionProvider"])
                    fns[op + " decomposition"] = (lambda s, f: lambda: s.run(None, f))(plain, feed)
            best = interleaved(fns, args.repeat)
            soft = best["SoftPool"]
            print(f"\n{name} {shape} {dtype}: SoftPool {soft * 1e3:.2f} ms")
            for op in ("EdscwPool", "IdwPool", "AdaPool"):
                ratio = best[op] / soft
                line = f"  {op:10s} {best[op] * 1e3:8.2f} ms  {ratio:5.2f}x SoftPool (target <= {TARGET}: " \
                       f"{'met' if ratio <= TARGET else 'NOT met'})"
                if op + " baseline" in best:
                    base_soft = best["SoftPool baseline"]
                    line += f"; baseline {best[op + ' baseline'] / base_soft:5.2f}x its SoftPool " \
                            f"(this build {best[op + ' baseline'] / best[op]:.2f}x faster)"
                if op + " decomposition" in best:
                    line += f"; decomposition {best[op + ' decomposition'] * 1e3:.1f} ms " \
                            f"({best[op + ' decomposition'] / best[op]:.1f}x the kernel)"
                print(line)

if __name__ == "__main__":
    main()
