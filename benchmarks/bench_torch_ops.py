"""Benchmark of the torch ops: native CPU kernels vs torch and the pure-torch reference.

For 8 x 64 x 56 x 56 float32, (kernel 2, stride 2) and (kernel 3, stride 2, pad 1), on
--threads threads (default 2), forward + backward, as ratios to torch's avg_pool2d in the
same run (rounds interleaved, median of --repeat):
  * soft_pool2d and stochastic_pool2d (expectation): the native kernels  (target <= 1.3)
  * the SoftPool paper repo's formula avg_pool(x*e^x) / avg_pool(e^x)      (soft >= 3x faster)
  * the pure-torch reference (the first implementation, kept as the reference), timed in a
    loop of its own with avg_pool2d: its gigabytes of allocations per call disturbed the
    other columns' times when interleaved with them
Also: training-mode sampling on 64 x 64 x 32 x 32 k2 s2 (forward) vs avg_pool2d's forward
(target <= 2), the per-call time on a 1x8x7x7 map (target <= 3x avg_pool2d), and the peak
memory of one SoftPool k3 s2 p1 training step on 16 x 64 x 112 x 112 above avg_pool2d's
(target <= 1.0x the input's size; measured in a child process per variant).
--ada: the adaPool family instead (edscw_pool, idw_pool, ada_pool with a per-position Beta),
forward (no_grad) and forward + backward on the same shapes: the native kernels against the
pure-torch reference (its own loop, scaled by soft_pool2d's time measured in both loops) and
against SoftPool's native op, as ratios.
The process is the user's: no environment variable is set here (torch's OpenMP workers
keep their default wait policy); the load average is printed before and after.

    python benchmarks/bench_torch_ops.py [--repeat 15] [--threads 2] [--no-memory] [--ada]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from poolexport.functional import soft_pool2d, soft_pool_reduce, stochastic_pool2d
from poolexport.ops import _native

CASES = [("k2 s2", dict(kernel_size=2, stride=2, padding=0)), ("k3 s2 p1", dict(kernel_size=3, stride=2, padding=1))]


def paper_formula(x, kernel_size, stride, padding):
    # github.com/alexandrosstergiou/SoftPool, pytorch/SoftPool/idea.py (unstable: overflows above ~88)
    e = torch.exp(x)
    return F.avg_pool2d(x * e, kernel_size, stride, padding) / F.avg_pool2d(e, kernel_size, stride, padding)


def fwd_bwd(fn, x, g):
    def run():
        x.grad = None
        fn(x).backward(g)
    return run


def interleaved(fns: dict, repeat: int) -> dict:
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(repeat: int) -> None:
    torch.manual_seed(0)
    print("| 8x64x56x56 fp32, forward + backward | " + " | ".join(n for n, _ in CASES) + " |")
    print("| --- |" + " ---: |" * len(CASES))
    rows: dict = {}
    for name, kw in CASES:
        x = torch.randn(8, 64, 56, 56).requires_grad_()
        with torch.no_grad():
            g = torch.randn_like(F.avg_pool2d(x, **kw))

        def reference(fn):
            def run():
                with _native.reference_kernels():
                    fn()
            return run

        baseline = fwd_bwd(lambda t: F.avg_pool2d(t, **kw), x, g)
        fns = {
            "torch avg_pool2d": baseline,
            "soft_pool2d (native)": fwd_bwd(lambda t: soft_pool2d(t, **kw), x, g),
            "stochastic_pool2d expectation (native)": fwd_bwd(lambda t: stochastic_pool2d(t, **kw), x, g),
            "paper formula avg_pool(x*e^x)/avg_pool(e^x)": fwd_bwd(lambda t: paper_formula(t, **kw), x, g),
        }
        t = interleaved(fns, repeat)
        # the pure-torch columns allocate gigabytes per call; interleaved with the others they
        # moved avg_pool2d's own time by up to 60% (freed memory, page faults), so they run in
        # a loop of their own, against avg_pool2d timed in that loop
        before = interleaved({"torch avg_pool2d": baseline,
                              "soft_pool2d (pure torch, before)": reference(fwd_bwd(lambda t: soft_pool2d(t, **kw), x, g)),
                              "stochastic_pool2d expectation (pure torch, before)":
                                  reference(fwd_bwd(lambda t: stochastic_pool2d(t, **kw), x, g))}, repeat)
        t.update({k: v * t["torch avg_pool2d"] / before["torch avg_pool2d"] for k, v in before.items()
                  if k != "torch avg_pool2d"})
        base = t["torch avg_pool2d"]
        for k, v in t.items():
            rows.setdefault(k, []).append(f"{v / base:.2f}x" + (f" ({v * 1e3:.2f} ms)" if k == "torch avg_pool2d" else ""))
        rows.setdefault("paper formula / soft_pool2d (speed-up)", []).append(
            f"{t['paper formula avg_pool(x*e^x)/avg_pool(e^x)'] / t['soft_pool2d (native)']:.2f}x")
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(v) + " |")

    x = torch.rand(64, 64, 32, 32)
    t = interleaved({"avg": lambda: F.avg_pool2d(x, 2, 2), "sample": lambda: stochastic_pool2d(x, 2, mode="sample", seed=1)},
                    repeat)
    print(f"\nsampling 64x64x32x32 k2 s2 forward: {t['sample'] / t['avg']:.2f}x avg_pool2d's forward "
          f"({t['avg'] * 1e3:.2f} ms)")

    # per call on a small map (an SE/CBAM descriptor, a batch-1 layer): best of rounds of n
    # calls, interleaved, in eval (no_grad) and with grad mode on (input without grad)
    small = torch.randn(1, 8, 7, 7)
    calls = {"avg_pool2d": lambda: F.avg_pool2d(small, 2), "soft_pool2d": lambda: soft_pool2d(small, 2),
             "adaptive_avg_pool2d(1)": lambda: F.adaptive_avg_pool2d(small, 1),
             "soft_pool_reduce (global)": lambda: soft_pool_reduce(small, (2, 3), True)}
    n, best = 2000, {}
    for mode, ctx in (("no_grad", torch.no_grad), ("grad mode on", torch.enable_grad)):
        with ctx():
            for f in calls.values():
                f()
            times = {k: [] for k in calls}
            for _ in range(max(repeat, 5)):
                for k, f in calls.items():
                    t = time.perf_counter()
                    for _ in range(n):
                        f()
                    times[k].append((time.perf_counter() - t) / n)
            best[mode] = {k: min(v) for k, v in times.items()}
    for mode, b in best.items():
        print(f"per call on 1x8x7x7, {mode}: avg_pool2d {b['avg_pool2d'] * 1e6:.1f} us, soft_pool2d "
              f"{b['soft_pool2d'] * 1e6:.1f} us ({b['soft_pool2d'] / b['avg_pool2d']:.2f}x); adaptive_avg_pool2d "
              f"{b['adaptive_avg_pool2d(1)'] * 1e6:.1f} us, global soft_pool_reduce "
              f"{b['soft_pool_reduce (global)'] * 1e6:.1f} us "
              f"({b['soft_pool_reduce (global)'] / b['adaptive_avg_pool2d(1)']:.2f}x)")


def ada_speed(repeat: int) -> None:
    from poolexport.ops import ada_pool as A

    torch.manual_seed(0)
    print("| 8x64x56x56 fp32 | pass | native / soft_pool2d native | pure-torch reference / native | native ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for case, kw in CASES:
        k, st, p = kw["kernel_size"], kw["stride"], kw["padding"]
        args = ([k, k], [st, st], [p] * 4, [1, 1], False, "NOTSET")
        x = torch.randn(8, 64, 56, 56).requires_grad_()
        with torch.no_grad():
            g = torch.randn_like(F.avg_pool2d(x, **kw))
        beta = torch.rand(g.shape[2:]).requires_grad_()  # one per output position, as the repository's AdaPool2d
        ops = {"edscw_pool": lambda t: A.edscw_pool(t, *args), "idw_pool": lambda t: A.idw_pool(t, *args),
               "ada_pool": lambda t: A.ada_pool(t, beta, *args)}
        soft = lambda t: soft_pool2d(t, **kw)  # noqa: E731

        def forward(fn):
            def run():
                with torch.no_grad():
                    fn(x)
            return run

        def reference(run):
            def ref():
                with _native.reference_kernels():
                    run()
            return ref

        for pass_name, make in (("forward", forward), ("forward + backward", lambda fn: fwd_bwd(fn, x, g))):
            native = interleaved({"soft": make(soft), **{n: make(f) for n, f in ops.items()}}, repeat)
            # the reference allocates gigabytes per call: a loop of its own, anchored on soft_pool2d
            ref = interleaved({"soft": make(soft), **{n: reference(make(f)) for n, f in ops.items()}},
                              max(3, repeat // 3))
            for n in ops:
                scaled_ref = ref[n] * native["soft"] / ref["soft"]
                print(f"| {n} {case} | {pass_name} | {native[n] / native['soft']:.2f}x | "
                      f"{scaled_ref / native[n]:.1f}x | {native[n] * 1e3:.2f} |")
            print(f"| soft_pool2d {case} | {pass_name} | 1.00x | | {native['soft'] * 1e3:.2f} |")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(variant: str) -> None:
    """One training step on 16x64x112x112; prints the peak RSS growth in bytes (Linux:
    the high-water mark is reset through /proc/self/clear_refs just before the step)."""
    x = torch.randn(16, 64, 112, 112)
    kw = dict(kernel_size=3, stride=2, padding=1)
    fn = {"avg": lambda t: F.avg_pool2d(t, **kw), "soft": lambda t: soft_pool2d(t, **kw)}[variant]
    # a step on a small tensor first, so lazily loaded code and thread pools are not counted
    small = torch.randn(1, 1, 8, 8, requires_grad=True)
    fn(small).sum().backward()
    x.requires_grad_()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    y = fn(x)
    y.backward(torch.ones_like(y))
    print((_status_kib("VmHWM") - base) * 1024)


def memory() -> None:
    size = 16 * 64 * 112 * 112 * 4
    peaks = {}
    for v in ("avg", "soft"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", v], capture_output=True, text=True, check=True)
        peaks[v] = int(out.stdout.split()[-1])
    print(f"\nSoftPool k3 s2 p1 training step, 16x64x112x112 (input {size / 2**20:.0f} MiB): peak RSS growth "
          f"avg_pool2d {peaks['avg'] / 2**20:.0f} MiB, soft_pool2d {peaks['soft'] / 2**20:.0f} MiB, "
          f"difference {(peaks['soft'] - peaks['avg']) / size:.2f}x the input's size")


def load_line(when: str) -> None:
    """The machine's load average; the run shares the cores with whatever else runs."""
    load, cores = os.getloadavg(), os.cpu_count() or 1
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({cores} cores)")
    if load[0] > cores:
        print(f"WARNING: 1-minute load {load[0]:.2f} exceeds the {cores} cores: other work shares the machine "
              "and the absolute times are inflated; compare ratios only")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", default=None)
    ap.add_argument("--ada", action="store_true", help="the adaPool family's section only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.memory_child:
        memory_child(a.memory_child)
        return
    if not _native.available():
        sys.exit("the library has no torch kernels: build it with `pip install .`")
    print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{a.threads} threads")
    load_line("before")
    if a.ada:
        ada_speed(a.repeat)
        load_line("after")
        return
    speed(a.repeat)
    if not a.no_memory:
        memory()
    load_line("after")


if __name__ == "__main__":
    main()
