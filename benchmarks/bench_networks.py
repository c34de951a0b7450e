"""Whole networks as users run them: stock pools against swapped pools, side by side.

Every example network of ``poolexport.models`` at its default input size (``mobilenet_se``,
MobileNetV3-Small with nine SE blocks and ten global pools, at 224 x 224) in three forms of
the same weights:

* stock: every global and windowed pool is torch's own (``nn.AdaptiveAvgPool2d(1)``,
  ``nn.AvgPool2d``; max pools stay max pools). ``mobilenet_se`` is built that way; the
  other example networks ship with poolexport's pools, which are turned into torch's
  average (or max) pool of the same geometry. Pools across the channel axis (CBAM's
  spatial branch) have no torch module and stay as built in every form.
* soft / stochastic: the stock network after ``poolexport.nn.replace_pools(model, "soft")``
  (or ``"stochastic"``), what a user does to their own network.
* as built: the example network with its own pools, where they differ from stock.

Measured per form: torch eval latency (batch 1 and 8, ``torch.no_grad()``), one torch
training step (forward, cross-entropy, backward, SGD step; batch 8; stochastic pools
sample), and ONNX Runtime latency of the file ``poolexport.onnx.export.export_model``
writes (target ``ort``, the custom-op library registered; batch 1 and 8). All forms of a
measurement run in one interleaved loop and the median is kept, so the ratios compare
times taken under the same load. On these 2-core virtual machines a single ONNX Runtime
call moves by up to 2x from one round to the next even when the machine is idle, so the
ONNX Runtime measures take 200 rounds, and every ratio is printed with a 90% bootstrap
interval (rounds resampled in pairs). ``--profile-pools`` adds what ONNX Runtime's own
profiler says the pool nodes alone cost per batch-1 run, summed over the network: the
swapped pools' price without the rest of the network's noise. The process is the user's: no environment variable is
set here, torch and ONNX Runtime keep their default thread counts.

    python benchmarks/bench_networks.py [--quick] [--networks mobilenet_se,resnet_softpool] [--profile-pools]
                                        [--json FILE]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import poolexport.models as models
import poolexport.nn as pnn
from poolexport.onnx.export import export_model
from poolexport.ort import session

SWAPS = ("soft", "stochastic")
FORMS = ("stock",) + SWAPS + ("as built",)
MEASURES = ("torch eval b1", "torch eval b8", "torch train b8", "ORT b1", "ORT b8")
BATCH = 8
# inputs: each network's default_input_shape, except mobilenet_se at its ImageNet size,
# where the last SE blocks pool 576 x 7 x 7 maps
BENCH_INPUTS = {"mobilenet_se": (3, 224, 224)}
# poolexport's pools that torch has a stock module for (one N x C map per pool; learned
# weights, as mixed pooling's alpha, are dropped): global ones, then windowed ones
_GLOBAL_POOLS = (pnn.GlobalAvgPool, pnn.GlobalMaxPool, pnn.GlobalAvgMaxPool, pnn.GlobalLpPool, pnn.GlobalSoftPool,
                 pnn.GlobalStochasticPool, pnn.GlobalMixedPool)
_WINDOW_POOLS = tuple(getattr(pnn, f"{kind}Pool{d}d") for kind in ("Avg", "Max", "AvgMax", "Lp", "Soft", "Stochastic",
                                                                     "Mixed") for d in (1, 2, 3))
_MAX_POOLS = (pnn.GlobalMaxPool, pnn.MaxPool1d, pnn.MaxPool2d, pnn.MaxPool3d)
_TORCH_AVG = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_TORCH_MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_TORCH_GLOBAL = {1: (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d), 2: (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
                 3: (nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)}


# ------------------------------------------------------------------ the forms of a network
def _same_padding(pool) -> object:
    """'same' as explicit padding where torch's pools can take it (stride 1, odd window)."""
    if pool.padding != "same":
        return pool.padding
    k = [pool.kernel_size] * pool.dims if isinstance(pool.kernel_size, int) else list(pool.kernel_size)
    d = [pool.dilation] * pool.dims if isinstance(pool.dilation, int) else list(pool.dilation)
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    if stride not in (1, [1] * pool.dims, (1,) * pool.dims) or any((ki - 1) * di % 2 for ki, di in zip(k, d)):
        return None
    return [(ki - 1) * di // 2 for ki, di in zip(k, d)]


def _torch_pool(pool: nn.Module, dims: int):
    """torch's stock pool for one of poolexport's global or windowed pools, or None."""
    is_max = isinstance(pool, _MAX_POOLS)
    if isinstance(pool, _GLOBAL_POOLS):
        stock = _TORCH_GLOBAL[dims][int(is_max)](1)
        return nn.Sequential(stock, nn.Flatten(1)) if pool.flatten else stock
    if isinstance(pool, _WINDOW_POOLS):
        padding = _same_padding(pool)
        if padding is None:
            return None
        if is_max:
            return _TORCH_MAX[pool.dims](pool.kernel_size, pool.stride, padding, pool.dilation,
                                         ceil_mode=pool.ceil_mode)
        if pool.dilation not in (1, [1] * pool.dims, (1,) * pool.dims):
            return None  # torch's average pools have no dilation
        return _TORCH_AVG[pool.dims](pool.kernel_size, pool.stride, padding, pool.ceil_mode,
                                     count_include_pad=False)
    return None


def to_stock(model: nn.Module, dims: int = 2) -> list[str]:
    """Turn poolexport's global and windowed pools into torch's (in place); the names."""
    plan = []
    for name, module in model.named_modules():
        if name and not any(name.startswith(done + ".") for done, _ in plan):
            stock = _torch_pool(module, dims)
            if stock is not None:
                plan.append((name, stock.train(module.training)))
    for name, stock in plan:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, stock)
    return [name for name, _ in plan]


def network_forms(arch: str) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """{form: eval-mode model} with identical weights, and how many pools each form swapped."""
    torch.manual_seed(0)
    built = models.create_model(arch).eval()
    for mod in built.modules():  # NewCBAM starts as the identity (gamma = 0): make its pools count
        if isinstance(mod, (models.NewCBAM, models.NewCBAMSeed)):
            nn.init.constant_(mod.gamma, 0.5)
    stock = copy.deepcopy(built)
    counts = {"stock": len(to_stock(stock))}
    forms = {"stock": stock}
    for pool in SWAPS:
        forms[pool] = copy.deepcopy(stock)
        counts[pool] = len(pnn.replace_pools(forms[pool], pool))
    if counts["stock"]:
        forms["as built"] = built
    return forms, counts


# ------------------------------------------------------------------ timing
def interleaved(fns: dict, repeat: int, warmup: int = 2, settle: int = 0) -> dict:
    """Seconds of every round per callable; every round runs each callable in turn, first
    ``settle`` untimed calls, then one timed call."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            for _ in range(settle):
                f()
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def ratio_interval(times: dict, form: str, level: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """Bootstrap interval of median(form) / median(stock): rounds are resampled with
    replacement, the same rounds for both forms (a round's load hit both alike)."""
    rng = random.Random(0)
    a, b = times[form], times["stock"]
    n = len(a)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(a[i] for i in idx) / statistics.median(b[i] for i in idx))
    ratios.sort()
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return ratios[int(lo * (resamples - 1))], ratios[int(hi * (resamples - 1))]


def eval_call(model, x):
    def run():
        with torch.no_grad():
            model(x)
    return run


def train_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # a softmax head only changes the loss's value
        opt.step()
    return run


def ort_call(sess, x):
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def bench_network(arch: str, repeat: int, ort_repeat: int) -> dict:
    forms, counts = network_forms(arch)
    shape = BENCH_INPUTS.get(arch, models.default_input_shape(arch)[1:])
    gen = torch.Generator().manual_seed(1)
    x1 = torch.rand(1, *shape, generator=gen)  # non-negative, as after a ReLU
    x8 = torch.rand(BATCH, *shape, generator=gen)
    y8 = torch.randint(0, 10, (BATCH,), generator=gen)
    t0 = time.perf_counter()
    onnx_bytes = {f: export_model(m, x1, target="ort").SerializeToString() for f, m in forms.items()}
    sessions = {f: session(b) for f, b in onnx_bytes.items()}
    export_s = time.perf_counter() - t0
    training = {f: copy.deepcopy(m).train() for f, m in forms.items()}  # its steps never touch the eval models
    calls = {
        "torch eval b1": {f: eval_call(m, x1) for f, m in forms.items()},
        "torch eval b8": {f: eval_call(m, x8) for f, m in forms.items()},
        "torch train b8": {f: train_step(m, x8, y8) for f, m in training.items()},
        "ORT b1": {f: ort_call(s, x1) for f, s in sessions.items()},
        "ORT b8": {f: ort_call(s, x8) for f, s in sessions.items()},
    }
    # each ONNX Runtime session has its own thread pool, whose workers spin for a while after
    # a run: one untimed call first lets the previous session's workers go idle, so every
    # timed call sees what a user's single session sees
    settle = {m: 1 if m.startswith("ORT") else 0 for m in calls}
    # the machine's own noise moves one ONNX Runtime call by up to 2x from round to round
    # (seen in a single session on an idle machine); the short ORT calls get more rounds
    rounds = {m: ort_repeat if m.startswith("ORT") else repeat for m in calls}
    times = {m: interleaved(fns, rounds[m], settle=settle[m]) for m, fns in calls.items()}
    pools = profile_pools(onnx_bytes, x1, PROFILE_RUNS) if PROFILE_RUNS else None
    return {"network": arch, "input": list(shape), "pools swapped": counts, "export s": export_s,
            "rounds": rounds, "pool profile us": pools,
            "ms": {m: {f: statistics.median(v) * 1e3 for f, v in t.items()} for m, t in times.items()},
            "interval": {m: {f: ratio_interval(t, f) for f in t if f != "stock"} for m, t in times.items()}}


def profile_pools(models_by_form: dict, x, runs: int) -> dict:
    """Microseconds per run that ONNX Runtime's profiler gives each op type, per form;
    the sessions run interleaved, ``runs`` profiled calls each after a warm-up."""
    import onnxruntime as ort

    from poolexport.ort import session_options

    sessions = {}
    for f, m in models_by_form.items():
        so = session_options()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(PROFILE_DIR, f"pools_{f.replace(' ', '_')}")
        sessions[f] = ort.InferenceSession(m, so, providers=["CPUExecutionProvider"])
    feed = {f: {s.get_inputs()[0].name: x.numpy()} for f, s in sessions.items()}
    for _ in range(runs + 5):  # the first 5 are warm-up, left out below
        for f, s in sessions.items():
            s.run(None, feed[f])
    per_op = {}
    for f, s in sessions.items():
        path = s.end_profiling()
        with open(path) as fh:
            events = json.load(fh)
        os.remove(path)
        node_events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        nodes = len({e["name"] for e in node_events})
        totals: dict = {}
        for e in node_events[5 * nodes:]:
            op = e["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + e["dur"] / runs
        per_op[f] = totals
    return per_op


POOL_OPS = ("ReduceMean", "GlobalAveragePool", "GlobalMaxPool", "ReduceMax", "AveragePool", "MaxPool",
            "ReduceSoftPool", "ReduceStochasticPool", "SoftPool", "StochasticPool")
PROFILE_DIR = os.environ.get("TMPDIR", "/tmp")
PROFILE_RUNS = 0  # --profile-pools


# ------------------------------------------------------------------ report
def load_line(when: str) -> dict:
    load, cores = os.getloadavg(), os.cpu_count() or 1
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({cores} cores)")
    if load[0] > cores:
        print(f"WARNING: 1-minute load {load[0]:.2f} exceeds the {cores} cores: other work shares the machine "
              "and the absolute times are inflated; compare ratios only")
    return {"1min": load[0], "5min": load[1], "15min": load[2], "cores": cores}


def print_table(results: list[dict]) -> None:
    head = ["network (input)", "measure", "stock ms"]
    for f in FORMS[1:]:
        head += [f"{f} ms", f"{f} / stock"]
    print("| " + " | ".join(head) + " |")
    print("| --- | --- |" + " ---: |" * (len(head) - 2))
    for r in results:
        label = f"{r['network']} ({'x'.join(map(str, r['input']))})"
        for measure in MEASURES:
            ms = r["ms"][measure]
            cells = [label, measure, f"{ms['stock']:.3f}"]
            for f in FORMS[1:]:
                cells += [f"{ms[f]:.3f}", f"{ms[f] / ms['stock']:.2f}x"] if f in ms else ["", ""]
            print("| " + " | ".join(cells) + " |")
    print()
    print("90% bootstrap intervals of each ratio (rounds resampled, paired):")
    for r in results:
        for measure in MEASURES:
            cells = [f"{f} {lo:.2f}-{hi:.2f}x" for f, (lo, hi) in r["interval"][measure].items()]
            print(f"  {r['network']} {measure} ({r['rounds'][measure]} rounds): " + ", ".join(cells))
    print()
    for r in results:
        prof = r["pool profile us"]
        if not prof:
            continue
        print(f"{r['network']}, ONNX Runtime's profiler, batch 1, us per run summed over the network's nodes:")
        for f, ops in prof.items():
            pool = {op: us for op, us in ops.items() if op in POOL_OPS}
            print(f"  {f}: pools {sum(pool.values()):.0f} us ("
                  + ", ".join(f"{op} {us:.0f}" for op, us in sorted(pool.items())) + f"); all nodes {sum(ops.values()):.0f} us")
    print()
    for r in results:
        c = r["pools swapped"]
        print(f"{r['network']}: {c['stock']} pools made stock, replace_pools swapped {c['soft']} (soft) / "
              f"{c['stochastic']} (stochastic); ONNX exports {r['export s']:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of --repeat, 20 instead of --ort-repeat")
    ap.add_argument("--repeat", type=int, default=20, help="interleaved rounds per torch measurement (median)")
    ap.add_argument("--ort-repeat", type=int, default=200,
                    help="interleaved rounds per ONNX Runtime measurement (median; its calls are short and noisy)")
    ap.add_argument("--networks", default=None,
                    help=f"comma-separated subset of {','.join(models.list_models())} (default: all)")
    ap.add_argument("--profile-pools", type=int, nargs="?", const=300, default=0, metavar="RUNS",
                    help="also profile RUNS (300) batch-1 ONNX Runtime runs per form and report the pool nodes' time")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args()
    names = models.list_models() if a.networks is None else [n.strip() for n in a.networks.split(",") if n.strip()]
    unknown = sorted(set(names) - set(models.list_models()))
    if unknown:
        sys.exit(f"--networks: unknown {unknown}; choose from {models.list_models()}")
    repeat = 5 if a.quick else a.repeat
    ort_repeat = 20 if a.quick else a.ort_repeat
    global PROFILE_RUNS
    PROFILE_RUNS = a.profile_pools

    import onnxruntime

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ}
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M} {platform.machine()} {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}, "
          f"{repeat} interleaved rounds (ONNX Runtime: {ort_repeat}), median" + (f"; from the environment: {env}" if env else ""))
    before = load_line("before")
    warnings.filterwarnings("ignore")  # the exporter's notes would bury the table
    results = []
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        results.append(bench_network(name, repeat, ort_repeat))
    after = load_line("after")
    print()
    print_table(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
                       "cores": os.cpu_count(), "torch": torch.__version__, "torch threads": torch.get_num_threads(),
                       "onnxruntime": onnxruntime.__version__, "rounds": repeat, "ort rounds": ort_repeat, "environment": env,
                       "load before": before, "load after": after, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
