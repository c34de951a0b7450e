"""The stochastic ops' seed as a tensor (the ``tensor_seed`` overloads) and the in-graph
draw ``poolexport::_draw_seed``, which let torch.compile keep a per-step seed inside one
graph (tests/test_compile_inductor.py compiles them).

The tensor overloads make the picks of the int overloads, checked against the float32
NumPy oracle of tests/_reference.py (Philox written from the paper's constants) at the
seed's boundaries: the 32-bit halves of the key, int64's ends, negative seeds."""
import numpy as np
import pytest
import torch

import _reference as ref
import poolexport.functional as F
import poolexport.nn as pnn
from poolexport.ops import _native, reduce_stochastic_pool, stochastic_pool
from poolexport.ops.stochastic_pool import (SEED_BOUND, draw_seed, reduce_stochastic_pool_backward_tensor_seed,
                                            reduce_stochastic_pool_tensor_seed, stochastic_pool_backward_tensor_seed,
                                            stochastic_pool_tensor_seed)

# int64's range is the int overload's (its schema type); each 32-bit key half at 0, 1 and
# its ends; negative seeds are two's-complement
SEEDS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**62 - 1, 2**62, 2**63 - 1, -1, -(2**31),
         -(2**63)]
WINDOW = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], True, "NOTSET")  # overlapping, padded, ceil_mode
DTYPES = [torch.float32, torch.float16, torch.float64]  # native kernels; float64 goes to the reference


def _x(dtype=torch.float32, shape=(2, 3, 7, 6)):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return torch.where(torch.rand(*shape, generator=g, dtype=torch.float64) < 0.2, 0.0, x).to(dtype)


def _exact(y, expected, dtype):
    np.testing.assert_array_equal(y.double().numpy(), expected.astype(torch.empty((), dtype=dtype).numpy().dtype)
                                  .astype(np.float64))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_windowed_tensor_seed_makes_the_oracles_picks(seed, dtype):
    x = _x(dtype)
    t = torch.tensor(seed, dtype=torch.int64)
    y = stochastic_pool_tensor_seed(x, *WINDOW, "sample", t)
    expected = ref.pool(x.double().numpy(), lambda v, e: ref.stochastic_sample_window(v, seed, e), *WINDOW)
    _exact(y, expected, dtype)
    assert torch.equal(y, stochastic_pool(x, *WINDOW, "sample", seed))
    # the backward: the int overload's gradient (checked against float64 in test_stochastic_pool.py)
    g = torch.randn(y.shape, dtype=torch.float64).to(dtype)
    assert torch.equal(stochastic_pool_backward_tensor_seed(g, x, *WINDOW, "sample", t),
                       torch.ops.poolexport.stochastic_pool_backward(g, x, *WINDOW, "sample", seed))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reduce_tensor_seed_makes_the_oracles_picks(seed, dtype):
    x = _x(dtype, (2, 5, 3, 4))
    t = torch.tensor(seed, dtype=torch.int64)
    y = reduce_stochastic_pool_tensor_seed(x, [1, 3], False, "sample", t)
    expected = ref.reduce(x.double().numpy(), lambda v, e: ref.stochastic_sample_window(v, seed, e), [1, 3], False)
    _exact(y, expected, dtype)
    assert torch.equal(y, reduce_stochastic_pool(x, [1, 3], False, "sample", seed))
    g = torch.randn(y.shape, dtype=torch.float64).to(dtype)
    assert torch.equal(reduce_stochastic_pool_backward_tensor_seed(g, x, [1, 3], False, "sample", t),
                       torch.ops.poolexport.reduce_stochastic_pool_backward(g, x, [1, 3], False, "sample", seed))


@pytest.mark.parametrize("seed", [0, 2**31, 2**63 - 1, -1])
def test_reference_kernels_and_the_reference_twin_take_the_tensor_seed(seed):
    x, t = _x(), torch.tensor(seed)
    want = stochastic_pool(x, *WINDOW, "sample", seed)
    with _native.reference_kernels():
        assert torch.equal(stochastic_pool_tensor_seed(x, *WINDOW, "sample", t), want)
    assert torch.equal(torch.ops.poolexport._reference_stochastic_pool.tensor_seed(x, *WINDOW, "sample", t), want)


def test_seed_tensor_of_any_one_element_shape_and_strided():
    x = _x()
    want = stochastic_pool(x, *WINDOW, "sample", 77)
    for t in (torch.tensor([77]), torch.tensor([[77]]), torch.tensor([5, 77, 9])[1], torch.tensor([5, 77])[1:]):
        assert torch.equal(stochastic_pool_tensor_seed(x, *WINDOW, "sample", t), want)


@pytest.mark.parametrize("bad", [torch.tensor(1.0), torch.tensor(3, dtype=torch.int32), torch.tensor([1, 2]),
                                 torch.empty(0, dtype=torch.int64), torch.tensor(True)],
                         ids=["float", "int32", "two", "empty", "bool"])
def test_bad_seed_tensors_are_refused_by_kernel_reference_and_fake(bad):
    x = _x()
    with pytest.raises((ValueError, RuntimeError), match="seed must be a one-element int64"):
        stochastic_pool_tensor_seed(x, *WINDOW, "sample", bad)
    with pytest.raises((ValueError, RuntimeError), match="seed must be a one-element int64"):
        reduce_stochastic_pool_tensor_seed(x, [1], True, "sample", bad)
    with pytest.raises((ValueError, RuntimeError), match="seed must be a one-element int64"):
        torch.ops.poolexport._reference_stochastic_pool.tensor_seed(x, *WINDOW, "sample", bad)
    with torch._subclasses.FakeTensorMode() as mode:
        with pytest.raises((ValueError, RuntimeError), match="seed must be a one-element int64"):
            stochastic_pool_tensor_seed(mode.from_tensor(x), *WINDOW, "sample", mode.from_tensor(bad))


def test_opcheck_of_the_tensor_seed_overloads():
    x = torch.rand(2, 3, 6, 6).requires_grad_()
    t = torch.tensor(-5)
    torch.library.opcheck(stochastic_pool_tensor_seed, (x, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], True, "NOTSET",
                                                        "sample", t))
    torch.library.opcheck(stochastic_pool_tensor_seed, (x, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET",
                                                        "expectation", t))
    torch.library.opcheck(reduce_stochastic_pool_tensor_seed, (x, [1], True, "sample", t))


def test_autograd_through_the_tensor_seed_overload():
    x = _x(torch.float64).requires_grad_()
    t = torch.tensor(2**40 + 3)
    y = F.stochastic_pool2d(x, 3, 2, 1, ceil_mode=True, mode="sample", seed=t)
    (gx,) = torch.autograd.grad((y * torch.arange(y.numel()).reshape(y.shape)).sum(), x)
    x2 = x.detach().clone().requires_grad_()
    y2 = F.stochastic_pool2d(x2, 3, 2, 1, ceil_mode=True, mode="sample", seed=2**40 + 3)
    (gx2,) = torch.autograd.grad((y2 * torch.arange(y2.numel()).reshape(y2.shape)).sum(), x2)
    assert torch.equal(y, y2) and torch.equal(gx, gx2)
    torch.autograd.gradcheck(lambda a: reduce_stochastic_pool_tensor_seed(a, [2, 3], True, "sample", t),
                             (x.detach()[:1, :2].clone().requires_grad_(),))


def test_functional_forms_take_a_seed_tensor():
    x = _x()
    for fn, args in ((F.stochastic_pool1d, (x[..., 0], 2)), (F.stochastic_pool2d, (x, 2)),
                     (F.stochastic_pool3d, (x[:, :, None], 1))):
        assert torch.equal(fn(*args, mode="sample", seed=torch.tensor(-9)), fn(*args, mode="sample", seed=-9))
    assert torch.equal(F.stochastic_pool_reduce(x, (2, 3), False, "sample", torch.tensor(2**33)),
                       F.stochastic_pool_reduce(x, (2, 3), False, "sample", 2**33))


def test_draw_seed_draws_what_the_eager_layers_draw():
    """The graph's draw and an eager training forward take the same value from torch's
    generator and leave it in the same state."""
    x = torch.rand(1, 2, 8, 8, requires_grad=True)
    torch.manual_seed(11)
    s = draw_seed(x)
    after_op = torch.get_rng_state()
    assert s.dtype == torch.int64 and s.dim() == 0 and s.device.type == "cpu" and 0 <= int(s) < SEED_BOUND
    assert not s.requires_grad
    torch.manual_seed(11)
    y = pnn.StochasticPool2d(2).train()(x)
    assert torch.equal(torch.get_rng_state(), after_op)
    assert torch.equal(y, F.stochastic_pool2d(x, 2, mode="sample", seed=int(s)))
    torch.manual_seed(11)
    assert int(draw_seed(x)) == int(s)


def test_draw_seed_is_a_random_op_chained_through_one_buffer():
    """Tagged random (the AOT partitioner saves its output rather than drawing again in the
    backward); every draw writes the one chain buffer, so compile passes neither merge two
    draws nor reorder them (see test_compile_inductor.py)."""
    from poolexport.ops.stochastic_pool import DRAW_ORDER

    op = torch.ops.poolexport._draw_seed.default
    assert torch.Tag.nondeterministic_seeded in op.tags
    assert op._schema.arguments[0].alias_info.is_write
    before = int(DRAW_ORDER)
    draw_seed(torch.rand(2))
    draw_seed(torch.rand(2))
    assert int(DRAW_ORDER) == before + 2


@pytest.mark.parametrize("target", ["torch.ops.poolexport._draw_seed.default",
                                    "torch.ops.poolexport.stochastic_pool.tensor_seed",
                                    "torch.ops.poolexport.stochastic_pool_backward.tensor_seed",
                                    "torch.ops.poolexport.reduce_stochastic_pool.tensor_seed",
                                    "torch.ops.poolexport.reduce_stochastic_pool_backward.tensor_seed"])
def test_untrusted_program_allowlist_admits_the_new_ops(target):
    from poolexport._untrusted.operators import check_graph_target, operator_problem

    check_graph_target(target)
    *_, name, overload = target.split(".")
    assert operator_problem("poolexport", name, None) is None  # every overload (TorchScript resolves by types)


def test_export_keeps_the_integer_seed():
    """torch.jit.trace (the ONNX exporters' path for a training-mode layer) records the
    int overload with the seed drawn at trace time, as before: no tensor seed, no draw op."""
    m = pnn.StochasticPool2d(2).train()
    traced = torch.jit.trace(m, torch.rand(1, 1, 4, 4), check_trace=False)
    kinds = [n.kind() for n in traced.graph.nodes()]
    assert "poolexport::stochastic_pool" in kinds and "poolexport::_draw_seed" not in kinds
    (node,) = [n for n in traced.graph.nodes() if n.kind() == "poolexport::stochastic_pool"]
    assert node.schema().endswith("str mode, int seed) -> Tensor")
