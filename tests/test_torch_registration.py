"""The torch ops' compiled registration (custom_ops/torch/stable_ops.cc through torch's
stable C ABI) against the Python registration it replaces and the pure-torch reference.

References here are independent of the compiled kernels: the same op run in a child
process with ``POOLEXPORT_TORCH_REGISTRATION=python`` (the ctypes path, the library's own
thread pool), and the ``_reference_*`` twins (pure torch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import poolexport.functional as F
from poolexport.ops import _native, _registry

pytestmark = pytest.mark.skipif(not _native.available(), reason="the custom-op library is not built")

WINDOW = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET")


def _compiled() -> bool:
    return _registry.compiled_cpu_kernels()[0]


needs_compiled = pytest.mark.skipif(
    not _compiled(), reason=f"compiled registration unavailable: {_registry.compiled_cpu_kernels()[1]}")

# every op with one call each: (name, args after X)
CALLS = [
    ("soft_pool", WINDOW + (1.5,)),
    ("stochastic_pool", WINDOW + ("expectation", 0)),
    ("stochastic_pool", WINDOW + ("sample", 12345678901)),
    ("reduce_soft_pool", ([2, 3], True, 0.7)),
    ("reduce_soft_pool", (None, False, 1.0)),
    ("reduce_stochastic_pool", ([1], False, "expectation", 0)),
    ("reduce_stochastic_pool", ([2, 3], True, "sample", -5)),
]

_CHILD = textwrap.dedent("""
    import json, sys, torch
    calls = json.loads(sys.argv[1])
    from poolexport.ops import _registry
    assert not _registry.compiled_cpu_kernels()[0]
    torch.manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 5, 9, 11).abs().to(dtype).requires_grad_()
        for name, args in calls:
            y = getattr(torch.ops.poolexport, name).default(x, *args)
            (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
            out.append([y.detach().float().flatten().tolist(), g.float().flatten().tolist()])
    print(json.dumps(out))
""")


def _run_all():
    torch.manual_seed(0)
    out = []
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(2, 5, 9, 11).abs().to(dtype).requires_grad_()
        for name, args in CALLS:
            y = getattr(torch.ops.poolexport, name).default(x, *args)
            (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
            out.append([y.detach().float().flatten().tolist(), g.float().flatten().tolist()])
    return out


@needs_compiled
def test_compiled_kernels_are_the_ones_dispatched():
    table = torch._C._dispatch_dump("poolexport::soft_pool")
    cpu_lines = [line for line in table.splitlines() if line.startswith("CPU:")]
    assert cpu_lines and "stable_ops.cc" in cpu_lines[0], table


@needs_compiled
def test_compiled_equals_python_registration_bit_for_bit():
    env = dict(os.environ, **{_registry.REGISTRATION_ENV: "python"})
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(CALLS)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    expected = json.loads(child.stdout)
    got = _run_all()
    for (name, args), e, g in zip(CALLS * 2, expected, got):
        np.testing.assert_array_equal(np.array(g[0]), np.array(e[0]), err_msg=f"{name}{args} forward")
        np.testing.assert_array_equal(np.array(g[1]), np.array(e[1]), err_msg=f"{name}{args} backward")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_take_the_reference(dtype):
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    for name, args in CALLS:
        got = getattr(torch.ops.poolexport, name).default(x, *args)
        ref = getattr(torch.ops.poolexport, f"_reference_{name}").default(x, *args)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_reference_kernels_context_reaches_the_compiled_kernels():
    # float16 through the native kernel rounds once at the end; the reference computes in
    # float16 steps: at this input they differ, so equality proves which one ran
    torch.manual_seed(1)
    x = (torch.randn(4, 8, 16, 16) * 3).half()
    ref = torch.ops.poolexport._reference_soft_pool.default(x, *WINDOW, 2.0)
    native = torch.ops.poolexport.soft_pool.default(x, *WINDOW, 2.0)
    assert not torch.equal(native, ref), "pick an input where the two differ"
    with _native.reference_kernels():
        inside = torch.ops.poolexport.soft_pool.default(x, *WINDOW, 2.0)
    torch.testing.assert_close(inside, ref, rtol=0, atol=0)
    torch.testing.assert_close(torch.ops.poolexport.soft_pool.default(x, *WINDOW, 2.0), native, rtol=0, atol=0)


def test_non_contiguous_input_equals_contiguous():
    x = torch.randn(2, 9, 11, 5).permute(0, 3, 1, 2)  # channels-last strides
    assert not x.is_contiguous()
    for name, args in CALLS:
        op = getattr(torch.ops.poolexport, name).default
        torch.testing.assert_close(op(x, *args), op(x.contiguous(), *args), rtol=0, atol=0)
    g = torch.randn(2, 5, 5, 6).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not g.is_contiguous()
    dx = torch.ops.poolexport.soft_pool_backward.default(g, x, *WINDOW, 1.0)
    torch.testing.assert_close(dx, torch.ops.poolexport.soft_pool_backward.default(g.contiguous(), x.contiguous(),
                                                                                   *WINDOW, 1.0), rtol=0, atol=0)


def test_more_than_six_reduce_groups_take_the_reference():
    shape = (2, 3, 2, 3, 2, 3, 2)  # axes 1, 3, 5 reduced: 7 alternating groups
    x = torch.rand(shape)
    got = torch.ops.poolexport.reduce_soft_pool.default(x, [1, 3, 5], False, 1.0)
    ref = torch.ops.poolexport._reference_reduce_soft_pool.default(x, [1, 3, 5], False, 1.0)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # six groups still run natively and agree with the reference to rounding
    x6 = torch.rand(2, 3, 2, 3, 2, 3)
    torch.testing.assert_close(torch.ops.poolexport.reduce_soft_pool.default(x6, [1, 3, 5], False, 1.0),
                               torch.ops.poolexport._reference_reduce_soft_pool.default(x6, [1, 3, 5], False, 1.0))


@needs_compiled
@pytest.mark.parametrize("call, message", [
    (lambda x: torch.ops.poolexport.soft_pool.default(x, [], [], [], [], False, "NOTSET", 1.0),
     "kernel_shape must have 1 to 3 values"),
    (lambda x: torch.ops.poolexport.soft_pool.default(x, [2, 2], [0, 1], [0] * 4, [1, 1], False, "NOTSET", 1.0),
     "strides must be positive"),
    (lambda x: torch.ops.poolexport.soft_pool.default(x, [2, 2], [1, 1], [0] * 4, [1, 1], False, "SAME", 1.0),
     "auto_pad must be NOTSET"),
    (lambda x: torch.ops.poolexport.stochastic_pool.default(x, [2, 2], [1, 1], [0] * 4, [1, 1], False, "NOTSET",
                                                             "mean", 0), "mode must be 'expectation' or 'sample'"),
    (lambda x: torch.ops.poolexport.soft_pool.default(x, [9, 9], [1, 1], [0] * 4, [1, 1], False, "NOTSET", 1.0),
     "larger than the padded input"),
    (lambda x: torch.ops.poolexport.reduce_soft_pool.default(x, [4], True, 1.0), "out of range"),
    (lambda x: torch.ops.poolexport.reduce_soft_pool.default(x, [1, -3], True, 1.0), "duplicates"),
    (lambda x: torch.ops.poolexport.soft_pool_backward.default(torch.ones(1, 2, 3, 3), x, [2, 2], [2, 2], [0] * 4,
                                                                [1, 1], False, "NOTSET", 1.0), "gradient's shape"),
])
def test_bad_arguments_raise_value_error_with_the_onnx_kernels_message(call, message):
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=message):  # std::invalid_argument: torch raises ValueError
        call(x)


def test_direct_calls_skip_autograd_only_when_nothing_is_recorded():
    x = torch.randn(1, 4, 8, 8)
    assert F.soft_pool2d(x, 2).grad_fn is None
    xr = x.clone().requires_grad_()
    assert F.soft_pool2d(xr, 2).grad_fn is not None
    with torch.no_grad():
        assert F.soft_pool2d(xr, 2).grad_fn is None
    # same bits either way
    torch.testing.assert_close(F.soft_pool2d(xr, 2).detach(), F.soft_pool2d(x, 2), rtol=0, atol=0)


_THREADS_CHILD = textwrap.dedent("""
    import os, torch
    import poolexport.functional as F
    from poolexport.ops import _registry
    assert _registry.compiled_cpu_kernels()[0]
    torch.set_num_threads(2)
    x = torch.randn(8, 64, 56, 56)
    torch.nn.functional.avg_pool2d(x, 2)  # torch's own workers start here
    before = len(os.listdir("/proc/self/task"))
    xr = x.clone().requires_grad_()
    F.soft_pool2d(xr, 3, 2, 1).sum().backward()
    F.global_soft_pool2d(x) if hasattr(F, "global_soft_pool2d") else None
    print(before, len(os.listdir("/proc/self/task")))
""")


@needs_compiled
def test_kernels_run_on_torchs_threads_not_their_own():
    # the library's own pool would add detached workers; torch's intra-op pool adds none
    child = subprocess.run([sys.executable, "-c", _THREADS_CHILD], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    before, after = map(int, child.stdout.split())
    assert after == before, (before, after)


def test_remembered_window_arguments_keep_every_check():
    # a valid call is remembered; each near-identical invalid call must still be refused
    x = torch.randn(1, 2, 7, 7)
    F.soft_pool2d(x, 2)
    F.soft_pool2d(x, (2, 2), ceil_mode=True)
    for bad, error in [
        (lambda: F.soft_pool2d(x, 2.0), TypeError),  # 2.0 == 2 and hashes alike
        (lambda: F.soft_pool2d(x, True), TypeError),  # True == 1
        (lambda: F.soft_pool2d(x, (2.0, 2)), TypeError),
        (lambda: F.soft_pool2d(x, (2, 2), ceil_mode=1), TypeError),
        (lambda: F.soft_pool2d(x.long(), 2), ValueError),
        (lambda: F.soft_pool2d(torch.randn(1, 2, 1, 1), 2), ValueError),  # the window no longer fits
        (lambda: F.soft_pool2d(torch.randn(2, 7, 7), 2), ValueError),
    ]:
        with pytest.raises(error):
            bad()
    # and the remembered arguments are the checked ones
    torch.testing.assert_close(F.soft_pool2d(x, 3, 2, 1), torch.ops.poolexport._reference_soft_pool.default(
        x, [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], False, "NOTSET", 1.0))
