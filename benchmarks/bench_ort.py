"""Benchmark of the ONNX Runtime custom-op library, measured side by side.

CPU (default): for N x C x H x W = 8 x 64 x 112 x 112 with (kernel 2, stride 2) and
(kernel 3, stride 2, pad 1), and a 3-D case, one table per thread count (``--threads``,
default 1 and 2; torch and every ONNX Runtime session get that many intra-op threads). All
columns of a case are timed in one interleaved run, so every ratio compares times taken
under the same load. float32 rows, SoftPool and StochasticPool (expectation):
  * library: the op with the custom-op library, ms
  * ORT AveragePool on the same tensor and window, ms; ratio = library / AveragePool, with
    the target per row: SoftPool <= 1.0 at 2-D k2 s2 and <= 1.3 at 2-D k3 s2 p1,
    <= 1.3 elsewhere and for StochasticPool
  * decomposition: the same file without the library (its ``ort`` target, local functions
    run by plain ONNX Runtime), ms, and its time / library's                (target >= 4)
  * torch formula avgpool(x*exp(x)) / avgpool(exp(x)), ms, and its time / library's
    (SoftPool rows)                                                          (target >= 3)
  * naive formula: the standard-op SoftPool Exp, Mul, 2 AveragePool, Div in plain ONNX
    Runtime (unstable above x ~ 88), ms, and its time / library's (SoftPool rows)
  * portable: the ``portable`` target's file of the op (standard ops only, plain ONNX
    Runtime), ms, and its time / library's; portable / naive            (target <= 1.5)
float16 rows: the library's SoftPool and StochasticPool on the same tensor in float16
against ONNX Runtime's float16 AveragePool where its CPU provider has one. onnxruntime 1.32
on x86-64 has none: the session is created, but ONNX Runtime silently wraps the node in
Casts to and from float32 (seen in the optimized graph), so those rows say
"n/a (ORT has no fp16 AveragePool on CPU)" and give the ratio to the float32 AveragePool.
--portable: the ``portable`` target's SoftPool/StochasticPool (plain ONNX Runtime, standard
ops only) against the naive standard-op formula Exp, Mul, 2 AveragePool, Div (unstable
above x ~ 88) and against the generic one-hot-Conv decomposition it replaces.
--reduce (also run after the CPU tables): the global reduce forms ``ReduceSoftPool`` and
``ReduceStochasticPool`` (expectation) over axes H, W at 1x576x7x7, 8x576x7x7 and 8x64x56x56,
float32 and float16, against ONNX Runtime's ``GlobalAveragePool`` on the same float32 tensor
(target <= 1.5x); ORT's own float16 GlobalAveragePool is listed where its CPU provider has one.
--cuda: the CUDA kernels (through the library's C launchers on torch tensors): time and
achieved bandwidth (input read + output written) against a device-to-device copy.

The process runs as a user's would: no environment variable is set for speed (torch's
OpenMP workers keep their default wait policy; ONNX Runtime sessions are created with
intra-op spinning off, a session option, so that one session's idle workers do not steal
the cores of the next column in the interleaved rounds).

    python benchmarks/bench_ort.py [--repeat 10] [--threads 1,2] [--case SUBSTRING] [--portable | --cuda | --reduce]
"""
from __future__ import annotations

import argparse
import datetime
import os

import platform
import statistics
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

CASES = [
    ("2-D k2 s2", (8, 64, 112, 112), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("2-D k3 s2 p1", (8, 64, 112, 112), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("3-D k2 s2", (2, 32, 32, 56, 56), dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
]
OPS = (("SoftPool", {}), ("StochasticPool", {"mode": "expectation"}))
# library / ORT AveragePool: SoftPool tighter at the two 2-D cases, 1.3 elsewhere
SOFTPOOL_TARGET = {"2-D k2 s2": 1.0, "2-D k3 s2 p1": 1.3}
DEFAULT_TARGET = 1.3
PORTABLE_TARGET = 1.5  # portable SoftPool / naive formula
NO_FP16_AVG = "n/a (ORT has no fp16 AveragePool on CPU)"


def one_node(op, attrs, domain="poolexport", opset=18, elem=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("X", elem, None)
    y = helper.make_tensor_value_info("Y", elem, None)
    node = helper.make_node(op, ["X"], ["Y"], domain=domain, **attrs)
    # opset 18: ONNX Runtime's AveragePool-19 (dilations) takes a slower generic path; the
    # baseline is its fastest AveragePool
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("poolexport", 1)]
    return helper.make_model(helper.make_graph([node], op, [x], [y]), opset_imports=opsets, ir_version=10)


def timeit(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict, repeat: int) -> dict:
    """Best-of-``repeat`` seconds per callable, timed in interleaved rounds so that every
    column sees the same machine load (the CI/dev machines here are shared)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def session_options(threads):
    """ONNX Runtime options for every column: ``threads`` intra-op threads, no spinning.
    Every session gets its own intra-op pool; with spinning on, one session's idle workers
    keep spinning into the next session's run and steal its cores (on the 2-core dev
    machine the library's 2-thread SoftPool measured slower than 1 thread that way)."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return o


def inserted_casts(build, threads):
    """Whether ONNX Runtime wrapped the graph's nodes in Casts to float32. Its CPU provider
    does that silently for a float16 node without a float16 kernel, so a session that was
    created proves nothing; the optimized graph shows it. ``build(options)`` makes the session."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        o = session_options(threads)
        o.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        # the Casts are inserted at every level; without fusions the graph is saved as is, unwarned
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        build(o)
        return any(n.op_type == "Cast" for n in onnx.load(o.optimized_model_filepath).graph.node)


def ort_fp16_avgpool(a, threads):
    """A session on ONNX Runtime's own float16 AveragePool, or None where its CPU provider has
    none (it refuses the node, or casts it to float32: onnxruntime 1.32 on x86-64 casts)."""
    return ort_fp16_session(one_node("AveragePool", {**a, "count_include_pad": 0}, domain="",
                                     elem=TensorProto.FLOAT16), threads)


def ort_fp16_session(model, threads):
    """A session on ``model`` (one float16 node of ONNX Runtime's own), or None where its
    CPU provider has no float16 kernel for it: it refuses the node, or wraps it in Casts."""
    import onnxruntime as ort

    build = lambda o: ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])  # noqa: E731
    try:
        return None if inserted_casts(build, threads) else build(session_options(threads))
    except Exception as e:  # onnxruntime's pybind error classes are not a stable import
        if "NOT_IMPLEMENTED" in str(e) or "kernel" in str(e).lower():
            return None
        raise


def torch_formula(x, a):
    """PyTorch's SoftPool formula avgpool(x*exp(x)) / avgpool(exp(x)) on ``x``, as a callable."""
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x)
    pool = {4: F.avg_pool2d, 5: F.avg_pool3d}[x.ndim]
    kw = dict(kernel_size=a["kernel_shape"], stride=a["strides"], padding=[p for p in a.get("pads", [0] * 6)[: x.ndim - 2]])

    def run():
        with torch.no_grad():
            e = torch.exp(xt)
            return pool(xt * e, **kw) / pool(e, **kw)

    return run


def cpu_columns(x, a, threads, apply_target):
    """Every timed callable of one case, for one interleaved run (so every ratio of the row
    compares times taken under the same load); "avg fp16" only where ORT has its own."""
    import onnxruntime as ort

    from poolexport import ort as pxort

    feed, feed16 = {"X": x}, {"X": x.astype(np.float16)}

    def plain(m):
        return ort.InferenceSession(m.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])

    run = lambda s, f=feed: lambda: s.run(None, f)  # noqa: E731
    fns = {"avg": run(plain(one_node("AveragePool", {**a, "count_include_pad": 0}, domain=""))),
           "torch": torch_formula(x, a), "naive": run(plain(naive_soft_pool(a)))}
    avg16 = ort_fp16_avgpool(a, threads)
    if avg16 is not None:
        fns["avg fp16"] = run(avg16, feed16)
    for op, extra in OPS:
        model = one_node(op, {**a, **extra})
        fns[op] = run(pxort.session(model.SerializeToString(), options=session_options(threads)))
        if apply_target is not None:
            copy = lambda: onnx.ModelProto.FromString(model.SerializeToString())  # noqa: E731
            fns[op + " decomposition"] = run(plain(apply_target(copy(), "ort")))
            fns[op + " portable"] = run(plain(apply_target(copy(), "portable")))
        fns[op + " fp16"] = run(library_fp16(one_node(op, {**a, **extra}, elem=TensorProto.FLOAT16), threads), feed16)
    return fns


def library_fp16(model, threads):
    """The library's session on a float16 model; refuses to time ORT's float32 fallback."""
    from poolexport import ort as pxort

    build = lambda o: pxort.session(model.SerializeToString(), options=o)  # noqa: E731
    if inserted_casts(build, threads):
        raise RuntimeError(f"poolexport: the library has no float16 {model.graph.node[0].op_type} kernel on CPU "
                           "(ONNX Runtime cast it to float32)")
    return build(session_options(threads))


def ms_and_ratio(t, key, t_lib):
    """'ms | time / library's' for a column, or 'n/a | n/a' where it was not measured."""
    return f"{t[key] * 1e3:.1f} | {t[key] / t_lib:.1f}x" if key in t else "n/a | n/a"


def cpu_rows(name, t):
    """The float32 and float16 rows of one case from one interleaved run's times."""
    for op, _ in OPS:
        t_lib = t[op]
        soft = op == "SoftPool"
        target = SOFTPOOL_TARGET.get(name, DEFAULT_TARGET) if soft else DEFAULT_TARGET
        tor = ms_and_ratio(t, "torch", t_lib) if soft else "- | -"
        naive = ms_and_ratio(t, "naive", t_lib) if soft else "- | -"
        pn = (f"{t[op + ' portable'] / t['naive']:.2f}" if op + " portable" in t else "n/a") if soft else "-"
        print(f"| {name} | {op} | {t_lib * 1e3:.1f} | {t['avg'] * 1e3:.1f} | {t_lib / t['avg']:.2f} | <= {target} "
              f"| {ms_and_ratio(t, op + ' decomposition', t_lib)} | {tor} | {naive} "
              f"| {ms_and_ratio(t, op + ' portable', t_lib)} | {pn} |", flush=True)
    for op, _ in OPS:
        t16 = t[op + " fp16"]
        if "avg fp16" in t:
            avg, ratio = f"{t['avg fp16'] * 1e3:.1f}", f"{t16 / t['avg fp16']:.2f}"
        else:  # the fp32 AveragePool of the same run stands in
            avg, ratio = NO_FP16_AVG, f"{t16 / t['avg']:.2f} (vs fp32 AveragePool)"
        print(f"| {name} | {op} fp16 | {t16 * 1e3:.1f} | {avg} | {ratio} | - | - | - | - | - | - | - | - | - | - |", flush=True)


def bench_cpu(repeat, threads, case=None):
    """One table: every case with ``threads`` intra-op threads in torch and every session."""
    import onnxruntime as ort
    import torch

    try:
        from poolexport.onnx.targets import apply_target
    except ImportError:  # the decompositions are not there: skip those columns
        apply_target = None

    torch.set_num_threads(threads)
    label = f"{threads} thread{'s' if threads > 1 else ''}"
    print(f"\n## CPU, {label}\n")
    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}, {label} "
          f"of {os.cpu_count()} cores, onnxruntime {ort.__version__}, torch {torch.__version__}; "
          f"best of {repeat} interleaved runs, ms")
    print("| case | op | library | ORT AveragePool | library / AveragePool | target | decomposition | speed-up (>= 4) "
          "| torch formula | speed-up (>= 3) | naive formula | naive / library | portable | portable / library "
          f"| portable / naive (<= {PORTABLE_TARGET}) |")
    print("| --- | --- |" + " ---: |" * 13)
    for name, shape, a in CASES:
        if case and case not in name:
            continue
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        fns = cpu_columns(x, a, threads, apply_target)
        cpu_rows(name, interleaved(fns, repeat))


def naive_soft_pool(a):
    """The SoftPool paper's formula in standard ops: AvgPool(x*e^x) / AvgPool(e^x)."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    pool = {**a, "count_include_pad": 0}
    nodes = [helper.make_node("Exp", ["X"], ["e"]), helper.make_node("Mul", ["X", "e"], ["xe"]),
             helper.make_node("AveragePool", ["xe"], ["num"], **pool),
             helper.make_node("AveragePool", ["e"], ["den"], **pool), helper.make_node("Div", ["num", "den"], ["Y"])]
    return helper.make_model(helper.make_graph(nodes, "naive", [x], [y]), opset_imports=[helper.make_opsetid("", 18)],
                             ir_version=10)


def bench_portable(repeat, threads=None, case=None):
    import onnxruntime as ort

    from poolexport.onnx.targets import apply_target, attach_functions, normalize_nodes

    threads = threads or os.cpu_count()
    so = session_options(threads)
    session = lambda m: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])  # noqa
    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}, {threads} threads, "
          f"onnxruntime {ort.__version__}; plain ONNX Runtime (no library); best of {repeat} interleaved runs, ms")
    print("| case | op | portable | `ort` file, plain ORT | ORT AveragePool | naive formula | portable / naive (<= 1.5) "
          "| generic decomposition | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, shape, a in CASES:
        if case and case not in name:
            continue
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {"X": x}
        avg = session(one_node("AveragePool", {**a, "count_include_pad": 0}, domain=""))
        naive = session(naive_soft_pool(a))
        fns = {"avg": lambda: avg.run(None, feed), "naive": lambda: naive.run(None, feed)}
        for op, extra in (("SoftPool", {}), ("StochasticPool", {"mode": "expectation"})):
            model = one_node(op, {**a, **extra})
            copy = lambda: onnx.ModelProto.FromString(model.SerializeToString())  # noqa: E731
            fast = session(apply_target(copy(), "portable"))
            ort_file = session(apply_target(copy(), "ort"))  # its local functions, inlined by ONNX Runtime
            bare = copy()
            normalize_nodes(bare)
            generic = session(attach_functions(bare, fast=False))  # the one-hot Conv body alone
            fns[op] = lambda s=fast: s.run(None, feed)
            fns[op + " ort"] = lambda s=ort_file: s.run(None, feed)
            fns[op + " generic"] = lambda s=generic: s.run(None, feed)
        t = interleaved(fns, repeat)
        for op in ("SoftPool", "StochasticPool"):
            ratio = f"{t[op] / t['naive']:.2f}" if op == "SoftPool" else "-"
            print(f"| {name} | {op} | {t[op] * 1e3:.1f} | {t[op + ' ort'] * 1e3:.1f} | {t['avg'] * 1e3:.1f} | "
                  f"{t['naive'] * 1e3:.1f} | {ratio} | {t[op + ' generic'] * 1e3:.1f} | "
                  f"{t[op + ' generic'] / t[op]:.1f}x |", flush=True)


REDUCE_SHAPES = [(1, 576, 7, 7), (8, 576, 7, 7), (8, 64, 56, 56)]
REDUCE_OPS = (("ReduceSoftPool", {}), ("ReduceStochasticPool", {"mode": "expectation"}))
REDUCE_TARGET = 1.5  # library / GlobalAveragePool


def global_average_pool(elem=TensorProto.FLOAT):
    return one_node("GlobalAveragePool", {}, domain="", elem=elem)


def ort_fp16_global_average_pool(threads):
    """ONNX Runtime's own float16 GlobalAveragePool session, or None where its CPU provider
    has none (refused, or silently wrapped in Casts to float32)."""
    return ort_fp16_session(global_average_pool(TensorProto.FLOAT16), threads)


def bench_reduce(repeat, threads):
    """The global reduce forms over H, W against GlobalAveragePool, one interleaved run per shape."""
    import onnxruntime as ort

    from poolexport import ort as pxort

    label = f"{threads} thread{'s' if threads > 1 else ''}"
    print(f"\n## Reduce forms over H, W, {label}\n")
    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}, {label} of {os.cpu_count()} cores, "
          f"onnxruntime {ort.__version__}; best of {repeat} interleaved runs, ms; ratio = library / float32 "
          "GlobalAveragePool of the same run")
    print(f"| shape | op | dtype | library | GlobalAveragePool fp32 | ratio (<= {REDUCE_TARGET}) | ORT fp16 GlobalAveragePool |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    avg16 = ort_fp16_global_average_pool(threads)
    for shape in REDUCE_SHAPES:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed, feed16 = {"X": x}, {"X": x.astype(np.float16)}
        run = lambda sess, f: lambda: sess.run(None, f)  # noqa: E731
        gap = ort.InferenceSession(global_average_pool().SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
        fns = {"avg": run(gap, feed)}
        if avg16 is not None:
            fns["avg fp16"] = run(avg16, feed16)
        for op, extra in REDUCE_OPS:
            attrs = {"axes": [2, 3], "keepdims": 1, **extra}
            fns[op] = run(pxort.session(one_node(op, attrs).SerializeToString(), options=session_options(threads)), feed)
            fns[op + " fp16"] = run(library_fp16(one_node(op, attrs, elem=TensorProto.FLOAT16), threads), feed16)
        t = interleaved(fns, repeat)
        name = "x".join(map(str, shape))
        for op, _ in REDUCE_OPS:
            for dtype, key in (("fp32", op), ("fp16", op + " fp16")):
                a16 = f"{t['avg fp16'] * 1e3:.3f}" if (dtype == "fp16" and "avg fp16" in t) else (
                    "n/a (none on CPU)" if dtype == "fp16" else "-")
                print(f"| {name} | {op} | {dtype} | {t[key] * 1e3:.3f} | {t['avg'] * 1e3:.3f} | "
                      f"{t[key] / t['avg']:.2f} | {a16} |", flush=True)


def bench_cuda(repeat):
    import ctypes

    import torch

    import poolexport
    from poolexport._window import make_window_spec

    lib = ctypes.CDLL(poolexport.get_library_path())
    f = lib.poolexport_cuda_launch_window
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p]
    print(f"# {datetime.date.today()}  {torch.cuda.get_device_name()}; CUDA events, median of {repeat} runs")
    print("| case | dtype | op | kernel ms | GB/s | D2D copy GB/s (of the input) | fraction |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")

    def cuda_time(fn):
        fn()
        ts = []
        for _ in range(repeat):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e) / 1e3)
        return statistics.median(ts)

    for name, shape, a in CASES:
        for dtype, code in ((torch.float32, 0), (torch.float16, 1)):
            x = torch.randn(shape, device="cuda").to(dtype)
            k = len(shape) - 2
            spec = make_window_spec("bench", k, a["kernel_shape"], a["strides"], a.get("pads", 0))
            out, begin = spec.resolve(shape[2:])
            pad3 = lambda v, fill: [fill] * (3 - k) + list(v)  # noqa: E731
            y = torch.empty((*shape[:2], *out), device="cuda", dtype=dtype)
            copy_dst = torch.empty_like(x)
            t_copy = cuda_time(lambda: copy_dst.copy_(x))
            bw_copy = 2 * x.numel() * x.element_size() / t_copy / 1e9
            for op, scalar in ((0, int(np.float32(1.0).view(np.int32))), (1, 0), (1, 1)):
                p = [shape[0], shape[1], *pad3(shape[2:], 1), *pad3(out, 1), *pad3(spec.kernel_shape, 1),
                     *pad3(spec.strides, 1), *pad3(spec.dilations, 1), *pad3(begin, 0), scalar, 0, 0]
                arr = (ctypes.c_int32 * len(p))(*p)
                stream = torch.cuda.current_stream().cuda_stream
                t = cuda_time(lambda: f(op, code, x.data_ptr(), y.data_ptr(), arr, stream))
                bw = (x.numel() + y.numel()) * x.element_size() / t / 1e9
                opname = ["SoftPool", "StochasticPool expectation", "StochasticPool sample"][op + scalar if op else 0]
                print(f"| {name} | {str(dtype)[6:]} | {opname} | {t * 1e3:.3f} | {bw:.0f} | {bw_copy:.0f} | {bw / bw_copy:.2f} |", flush=True)


def thread_counts(text):
    """``--threads``: one positive count or a comma list of them, e.g. ``1,2``."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=thread_counts, default=None,
                    help="intra-op threads for every column, a comma list: one table each "
                         "(default: 1,2; with --portable: all cores)")
    ap.add_argument("--case", default=None, help="only the CPU cases whose name contains this (e.g. '3-D')")
    ap.add_argument("--cuda", action="store_true", help="benchmark the CUDA kernels (needs a GPU)")
    ap.add_argument("--portable", action="store_true", help="benchmark the portable target's standard-op forms")
    ap.add_argument("--reduce", action="store_true", help="only the reduce forms against GlobalAveragePool")
    args = ap.parse_args()
    if args.cuda:
        bench_cuda(args.repeat)
    elif args.portable:
        for n in args.threads or [None]:  # None: all cores, as before
            bench_portable(args.repeat, n, args.case)
    elif args.reduce:
        for n in args.threads or [2]:
            bench_reduce(args.repeat, n)
    else:
        for n in args.threads or [1, 2]:
            bench_cpu(args.repeat, n, args.case)
        for n in args.threads or [2]:
            bench_reduce(args.repeat, n)


if __name__ == "__main__":
    main()
