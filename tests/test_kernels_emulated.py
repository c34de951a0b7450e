"""The CUDA kernel source, run on the CPU with real launch geometry.

custom_ops/cuda/kernels.cu is compiled as C++ against a small shim of the CUDA headers
(POOLEXPORT_HOST_EMULATION). The shim's launch runs every thread of the grid the
launcher asked for (blockDim.x = 256 and grid = min(cdiv(total, 256), 65535), the rule of
custom_ops/include/poolexport/kernel_abi.h): blocks in a scrambled order, each block's
threads as fibers resumed in a scrambled order, phase by phase between __syncthreads
barriers (the cooperative reduce kernels use them); a test knob caps the grid below the work so
that every thread runs its grid-stride loop several times. Outputs start as NaN, so an
element no thread writes shows. Results are compared with the float64 loops of
tests/_reference.py (output sizes and begin pads included), sampled picks bit for bit:
nothing here shares code with poolexport/_window.py. tests/test_kernels_cuda.py runs the
real thing on a GPU.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import _reference as ref

ROOT = Path(__file__).resolve().parents[1]

SHIM_RUNTIME = r"""
#pragma once
#include <stdint.h>
#include <ucontext.h>
#include <functional>
#include <vector>
#define __CUDACC__ 1
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
// the built-in variables of the thread being run, set by px_emulated_launch
static dim3 blockIdx(0, 0, 0), threadIdx(0, 0, 0), blockDim, gridDim;
typedef void* cudaStream_t;
typedef int cudaError_t;
static inline cudaError_t cudaGetLastError() { return 0; }
static inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }

#define PX_EXPORT extern "C" __attribute__((visibility("default")))
static unsigned px_grid_cap = 0;  // > 0: launch at most this many blocks (a test knob)
static unsigned px_last[3] = {0, 0, 0};  // grid.x, block.x, number of launches
PX_EXPORT void px_emu_set_grid_cap(unsigned cap) { px_grid_cap = cap; }
PX_EXPORT void px_emu_last_launch(unsigned* out) { for (int i = 0; i < 3; ++i) out[i] = px_last[i]; }

static inline uint64_t px_gcd(uint64_t a, uint64_t b) { while (b) { uint64_t t = a % b; a = b; b = t; } return a; }
// a permutation of 0..n-1: slot i -> (i * step + n / 3) mod n, step coprime with n and
// near 0.62 n, so neighbours in time are far apart
struct PxOrder {
  uint64_t n, step;
  explicit PxOrder(uint64_t n_) : n(n_), step(n_ * 5 / 8 + 1) { while (px_gcd(step, n) != 1) ++step; }
  uint64_t operator[](uint64_t i) const { return (i * step + n / 3) % n; }
};

// Each thread of a block is a fiber (ucontext) on this one OS thread: __syncthreads()
// switches back to the scheduler, which resumes the block's threads in the scrambled
// order until every one has reached the barrier or finished, then starts the next
// phase. So the cooperative reduce kernels (shared memory, barriers) run as on a GPU, and
// kernels without barriers run each thread to completion. Blocks run one after another,
// in a scrambled order (a static array serves as the block's __shared__ memory).
struct PxFiber { ucontext_t ctx; std::vector<char> stack; bool done; };
static ucontext_t px_scheduler;
static PxFiber* px_running = nullptr;
static std::function<void()> px_body;
static void px_trampoline() { px_body(); px_running->done = true; }
static inline void px_barrier() { swapcontext(&px_running->ctx, &px_scheduler); }
#define __syncthreads() px_barrier()
#define __shared__ static

template <class... P>
struct PxLaunch {
  void (*kernel)(P...);
  dim3 grid, block;
  void operator()(P... args) const {
    unsigned g = px_grid_cap && grid.x > px_grid_cap ? px_grid_cap : grid.x;
    px_last[0] = g; px_last[1] = block.x; ++px_last[2];
    gridDim = dim3(g);
    blockDim = dim3(block.x);
    px_body = [=] { kernel(args...); };
    std::vector<PxFiber> fibers(block.x);
    for (auto& f : fibers) f.stack.resize(1 << 16);
    PxOrder blocks(g), threads(block.x);
    for (uint64_t bi = 0; bi < g; ++bi) {
      unsigned b = (unsigned)blocks[bi];
      for (auto& f : fibers) {
        f.done = false;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = &px_scheduler;
        makecontext(&f.ctx, px_trampoline, 0);
      }
      for (bool live = true; live;) {  // one phase: every live thread up to its next barrier
        live = false;
        for (uint64_t ti = 0; ti < block.x; ++ti) {
          unsigned t = (unsigned)threads[ti];
          if (fibers[t].done) continue;
          blockIdx = dim3(b);
          threadIdx = dim3(t);
          px_running = &fibers[t];
          swapcontext(&px_scheduler, &fibers[t].ctx);
          live = live || !fibers[t].done;
        }
      }
    }
  }
};
template <class... P>
PxLaunch<P...> px_emulated_launch(void (*kernel)(P...), dim3 grid, dim3 block) { return PxLaunch<P...>{kernel, grid, block}; }
"""
SHIM_FP16 = r"""
#pragma once
#include "cuda_runtime.h"
#include "poolexport/common.h"
struct __half { uint16_t bits; };
static inline float __half2float(__half h) { return poolexport::half_bits_to_float(h.bits); }
static inline __half __float2half_rn(float f) { return __half{poolexport::float_to_half_bits(f)}; }
"""
# the host launch rule itself, for totals too large to run here
SHIM_ABI = r"""
#include "poolexport/kernel_abi.h"
extern "C" __attribute__((visibility("default"))) int32_t px_emu_launch_grid(int64_t total) {
  return poolexport_launch_grid(total);
}
"""
BLOCK, MAX_GRID = 256, 65535


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the emulated CUDA kernels")
    d = tmp_path_factory.mktemp("emu")
    (d / "cuda_runtime.h").write_text(SHIM_RUNTIME)
    (d / "cuda_fp16.h").write_text(SHIM_FP16)
    (d / "abi.cc").write_text(SHIM_ABI)
    so = d / "libemu.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-x", "c++", "-DPOOLEXPORT_HOST_EMULATION",
           f"-I{d}", f"-I{ROOT / 'custom_ops' / 'include'}", f"-I{ROOT / 'custom_ops' / 'cuda'}",
           str(ROOT / "custom_ops" / "cuda" / "kernels.cu"), str(d / "abi.cc"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lib = ctypes.CDLL(str(so))
    for name in ("poolexport_cuda_launch_window", "poolexport_cuda_launch_reduce"):
        f = getattr(lib, name)
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_void_p]
        f.restype = ctypes.c_int
    lib.px_emu_set_grid_cap.argtypes = [ctypes.c_uint]
    lib.px_emu_last_launch.argtypes = [ctypes.POINTER(ctypes.c_uint)]
    lib.px_emu_launch_grid.argtypes = [ctypes.c_int64]
    lib.px_emu_launch_grid.restype = ctypes.c_int32
    yield lib
    lib.px_emu_set_grid_cap(0)


def last_launch(lib):
    out = (ctypes.c_uint * 3)()
    lib.px_emu_last_launch(out)
    return tuple(out)


def _i32(v):
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _beta_bits(beta):
    return _i32(np.array([beta], np.float32).view(np.int32)[0])


def resolve(shape, a):
    """(output sizes, begin pads) per spatial axis, from tests/_reference.py."""
    k = len(shape) - 2
    s, d = a.get("strides") or [1] * k, a.get("dilations") or [1] * k
    pads = a.get("pads") or [0] * (2 * k)
    axes = [ref.axis_out(shape[2 + i], a["kernel_shape"][i], s[i], d[i], pads[i], pads[k + i], a.get("ceil_mode", False),
                         a.get("auto_pad", "NOTSET")) for i in range(k)]
    return [o for o, _ in axes], [b for _, b in axes]


def launch_window(lib, op, x, a, scalar, seed=0):
    """One launch through poolexport_cuda_launch_window (p[23] of custom_ops/cuda/launch.h)."""
    k = x.ndim - 2
    out, begin = resolve(x.shape, a)
    pad3 = lambda v, fill: [fill] * (3 - k) + list(v)  # noqa: E731
    p = [x.shape[0], x.shape[1], *pad3(x.shape[2:], 1), *pad3(out, 1), *pad3(a["kernel_shape"], 1),
         *pad3(a.get("strides") or [1] * k, 1), *pad3(a.get("dilations") or [1] * k, 1), *pad3(begin, 0),
         scalar, _i32(seed), _i32(seed >> 32)]
    x = np.ascontiguousarray(x)
    y = np.full((*x.shape[:2], *out), np.nan, dtype=x.dtype)  # an output no thread writes stays NaN
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    assert lib.poolexport_cuda_launch_window(op, int(x.dtype == np.float16), x.ctypes.data, y.ctypes.data, arr, None) == 0
    return y


def launch_reduce(lib, op, x, axes, keepdims, scalar, seed=0):
    r = x.ndim
    red = sorted(v % r for v in (axes if axes else range(r)))
    out_shape = [1 if i in red else x.shape[i] for i in range(r)] if keepdims else [x.shape[i] for i in range(r) if i not in red]
    dims = [1] * (6 - r) + list(x.shape)
    mask = sum(1 << (6 - r + v) for v in red)
    p = [r, *dims, mask, scalar, _i32(seed), _i32(seed >> 32)]
    x = np.ascontiguousarray(x)
    y = np.full(out_shape, np.nan, dtype=x.dtype)
    arr = (ctypes.c_int32 * len(p))(*[_i32(v) for v in p])
    assert lib.poolexport_cuda_launch_reduce(op, int(x.dtype == np.float16), x.ctypes.data, y.ctypes.data, arr, None) == 0
    return y


def _cdiv(a, b):
    return -(-a // b)


CASES = {
    # 2 x 4 x 17 x 17 = 2312 outputs: 10 blocks of 256
    "k3s2p1": ((2, 4, 33, 34), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "dil_asym": ((1, 2, 12, 11), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1], dilations=[2, 3])),
    # ceil_mode that drops the last window on both axes: 15 -> 8 (not 9), 35 -> 18 (not 19)
    "ceil_drop": ((2, 3, 15, 35), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True)),
    "same_upper": ((2, 2, 11, 10), dict(kernel_shape=[4, 3], strides=[3, 2], auto_pad="SAME_UPPER")),
    "1d_ceil_drop": ((2, 3, 69), dict(kernel_shape=[3], strides=[2], pads=[1, 2], ceil_mode=True)),
    "3d": ((1, 2, 5, 7, 6), dict(kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[1, 1, 1, 0, 1, 1])),
}
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float16: dict(rtol=2e-3, atol=2e-3)}
# None: the launch rule's grid; 3: fewer blocks than the work needs (grid-stride loops)
GRID_CAPS = [None, 3]


def _pool_ref(x, fn, a):
    return ref.pool(x.astype(np.float64), fn, a["kernel_shape"], a.get("strides"), a.get("pads"), a.get("dilations"),
                    a.get("ceil_mode", False), a.get("auto_pad", "NOTSET"))


def _expect_close(y, expected, dtype):
    assert y.shape == expected.shape and not np.isnan(y).any(), "an output element was never written"
    np.testing.assert_allclose(y.astype(np.float64), expected, **TOL[dtype])


def _set_cap(lib, cap, total):
    """Cap the emulated grid (None: the launch rule's); returns the grid a launch of
    ``total`` outputs must then have."""
    lib.px_emu_set_grid_cap(cap or 0)
    return min(_cdiv(total, BLOCK), MAX_GRID) if cap is None else min(cap, _cdiv(total, BLOCK))


def test_case_geometry_is_what_the_tests_claim():
    """The cases drop a ceil_mode window and span several blocks, as labelled."""
    for name in ("ceil_drop", "1d_ceil_drop"):
        shape, a = CASES[name]
        k = len(shape) - 2
        for i in range(k):
            assert ref.ceil_drops(shape[2 + i], a["kernel_shape"][i], a["strides"][i], 1, a["pads"][i], a["pads"][k + i])
    shape, a = CASES["k3s2p1"]
    assert np.prod(shape[:2]) * np.prod(resolve(shape, a)[0]) > 8 * BLOCK


def test_launch_rule(emu):
    for total, grid in [(1, 1), (256, 1), (257, 2), (2312, 10), (256 * MAX_GRID, MAX_GRID), (256 * MAX_GRID + 1, MAX_GRID),
                        (2**40, MAX_GRID)]:
        assert emu.px_emu_launch_grid(total) == grid


@pytest.mark.parametrize("cap", GRID_CAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_windowed_kernels_match_float64_reference(emu, case, dtype, cap):
    shape, a = CASES[case]
    x = (np.random.default_rng(1).standard_normal(shape) * 3).astype(dtype)
    total = shape[0] * shape[1] * int(np.prod(resolve(shape, a)[0]))
    grid = _set_cap(emu, cap, total)
    for beta in (1.0, 0.0, -2.0):
        y = launch_window(emu, 0, x, a, _beta_bits(beta))
        assert last_launch(emu)[:2] == (grid, BLOCK)
        _expect_close(y, _pool_ref(x, lambda v, e: ref.soft_window(v, float(np.float32(beta))), a), dtype)
    y = launch_window(emu, 1, x, a, 0)
    _expect_close(y, _pool_ref(x, lambda v, e: ref.stochastic_expectation_window(v), a), dtype)
    for seed in (0, 4242, -(2**40) - 7):
        y = launch_window(emu, 1, x, a, 1, seed)
        expected = _pool_ref(x, lambda v, e: ref.stochastic_sample_window(v, seed, e), a)
        np.testing.assert_array_equal(y.astype(np.float64), expected)


REDUCE_CASES = [((6, 5, 12, 10), [1], True), ((2, 3, 40, 5), [2, 3], False), ((2, 3, 4, 2, 3), [0, 2, 4], True),
                ((3, 4, 5), None, True), ((700, 3), [1], False)]


@pytest.mark.parametrize("cap", GRID_CAPS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,axes,keepdims", REDUCE_CASES)
def test_reduce_kernels_match_float64_reference(emu, shape, axes, keepdims, dtype, cap):
    x = (np.random.default_rng(2).standard_normal(shape) * 3).astype(dtype)
    x64 = x.astype(np.float64)
    reduced = {v % len(shape) for v in (axes or range(len(shape)))}
    grid = _set_cap(emu, cap, int(np.prod([n for i, n in enumerate(shape) if i not in reduced])))
    y = launch_reduce(emu, 0, x, axes, keepdims, _beta_bits(1.5))
    assert last_launch(emu)[:2] == (grid, BLOCK)
    _expect_close(y, ref.reduce(x64, lambda v, e: ref.soft_window(v, 1.5), axes, keepdims).reshape(y.shape), dtype)
    y = launch_reduce(emu, 1, x, axes, keepdims, 0)
    _expect_close(y, ref.reduce(x64, lambda v, e: ref.stochastic_expectation_window(v), axes, keepdims).reshape(y.shape),
                  dtype)
    y = launch_reduce(emu, 1, x, axes, keepdims, 1, 77)
    expected = ref.reduce(x64, lambda v, e: ref.stochastic_sample_window(v, 77, e), axes, keepdims).reshape(y.shape)
    np.testing.assert_array_equal(y.astype(np.float64), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_large_magnitudes(emu, dtype):
    """|x| in [5e3, 3e4]: SoftPool's exp needs the window maximum subtracted (exp(88) is
    float32's limit), the stochastic sums stay finite, fp16 outputs round correctly."""
    emu.px_emu_set_grid_cap(2)
    x = ref.large_magnitude_input((2, 3, 9, 36), seed=5).astype(dtype)
    x64 = x.astype(np.float64)
    a = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for beta in (1.0, 0.01, -0.5):
        y = launch_window(emu, 0, x, a, _beta_bits(beta))
        _expect_close(y, _pool_ref(x, lambda v, e: ref.soft_window(v, float(np.float32(beta))), a), dtype)
        y = launch_reduce(emu, 0, x, [1], True, _beta_bits(beta))
        _expect_close(y, ref.reduce(x64, lambda v, e: ref.soft_window(v, float(np.float32(beta))), [1], True), dtype)
    y = launch_window(emu, 1, x, a, 0)
    _expect_close(y, _pool_ref(x, lambda v, e: ref.stochastic_expectation_window(v), a), dtype)
    y = launch_reduce(emu, 1, x, [2, 3], False, 0)
    _expect_close(y, ref.reduce(x64, lambda v, e: ref.stochastic_expectation_window(v), [2, 3], False), dtype)
    y = launch_window(emu, 1, x, a, 1, 9)
    np.testing.assert_array_equal(y.astype(np.float64), _pool_ref(x, lambda v, e: ref.stochastic_sample_window(v, 9, e), a))


def test_sampled_pick_ties(emu):
    """Windows [u, 1 - u] with u the Philox uniform of their element: cum_0 == t exactly,
    so the documented first cum > t picks 1 - u (a >= would pick u)."""
    emu.px_emu_set_grid_cap(2)
    for seed in (0, 31337):
        x, expected = ref.tie_windows(seed, 600)
        y = launch_window(emu, 1, x[None], dict(kernel_shape=[2], strides=[2]), 1, seed)
        np.testing.assert_array_equal(y[0], expected[:, None])
        y = launch_reduce(emu, 1, x, [1], False, 1, seed)
        np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_stochastic_nan_reaches_exactly_its_windows(emu, dtype):
    """A NaN in a StochasticPool window (first, interior, last position) gives NaN there in
    both modes (stochastic_pool.h stochastic_r keeps it), on the windowed kernel and every
    reduce kernel (per output, warp and block cooperative: the lanes' partial sums and
    their max-r check carry the NaN); every other window is unchanged. The reduce kernels'
    SoftPool too (its lanes' max-|a| check must keep the NaN: the online softmax drops it)."""
    emu.px_emu_set_grid_cap(2)
    nan_any = lambda v, e: float(np.isnan(v).any())  # noqa: E731
    x = np.random.default_rng(6).uniform(-1, 2, (2, 3, 9, 36)).astype(dtype)
    x[0, 0, 0, 0] = x[0, 1, 4, 17] = x[1, 2, 8, 35] = np.nan
    a = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    mask = _pool_ref(x, nan_any, a) > 0
    for mode, fn in ((0, lambda v, e: ref.stochastic_expectation_window(v)),
                     (1, lambda v, e: ref.stochastic_sample_window(v, 9, e))):
        y = launch_window(emu, 1, x, a, mode, 9)
        want = _pool_ref(x, fn, a)
        assert np.array_equal(np.isnan(y), mask), f"windowed, sample={mode}"
        np.testing.assert_allclose(y[~mask].astype(np.float64), want[~mask], **TOL[dtype])
    # reduce: per output (strided axis), warp (innermost window of 36 >= 32) and block
    # (innermost window of 1100 >= 1024) lanes
    for shape, axes in (((2, 3, 9, 36), [1]), ((2, 3, 9, 36), [3]), ((2, 3, 1100), [2])):
        xr = np.random.default_rng(7).uniform(-1, 2, shape).astype(dtype)
        flat = xr.reshape(-1)
        flat[[0, flat.size // 2 + 3, flat.size - 1]] = np.nan
        mask = ref.reduce(xr, nan_any, axes, False) > 0
        for op, mode, fn in ((1, 0, lambda v, e: ref.stochastic_expectation_window(v)),
                             (1, 1, lambda v, e: ref.stochastic_sample_window(v, 5, e)),
                             (0, _beta_bits(1.5), lambda v, e: ref.soft_window(v, 1.5))):
            y = launch_reduce(emu, op, xr, axes, False, mode, 5)
            want = ref.reduce(xr.astype(np.float64), fn, axes, False)
            assert mask.any() and not mask.all()
            assert np.array_equal(np.isnan(y), mask), f"reduce {shape} {axes}, op {op}, scalar {mode}"
            np.testing.assert_allclose(y[~mask].astype(np.float64), want[~mask], **TOL[dtype])
