"""Stochastic pooling: expectation math, reproducible Philox picks, pick statistics, gradients."""
import numpy as np
import pytest
import torch

import _reference as ref
import poolexport.functional as F
from poolexport._philox import philox4x32, uniform_for_elements
from poolexport.nn import StochasticPool2d, StochasticPoolReduce
from poolexport.ops import reduce_stochastic_pool, stochastic_pool
from test_soft_pool import IDS, WINDOW_CASES, _input

# Known-answer vectors published with Random123 (kat_vectors, philox4x32_10).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", PHILOX_KAT)
def test_philox_known_answers(ctr, key, expected):
    words = philox4x32([torch.tensor([c], dtype=torch.int64) for c in ctr], key)
    assert tuple(int(w) for w in words) == expected
    assert tuple(ref.philox4x32_10(ctr, key)) == expected


def test_uniforms_match_reference_for_large_seeds_and_indices():
    for seed in (0, 1, -1, 2**40 + 7, -(2**63)):
        u = uniform_for_elements(seed, 50)
        assert u.dtype == torch.float32 and (u >= 0).all() and (u < 1).all()
        assert [float(v) for v in u] == [float(ref.uniform(seed, e)) for e in range(50)]


@pytest.mark.parametrize("case", WINDOW_CASES, ids=IDS)
def test_expectation_matches_reference(case):
    spatial, kernel, strides, pads, dil, ceil_mode, auto_pad = case
    x = _input(spatial)
    y = stochastic_pool(x, kernel, strides, pads, dil, ceil_mode, auto_pad, "expectation", 0)
    expected = ref.pool(x.numpy(), lambda v, _: ref.stochastic_expectation_window(v), kernel, strides, pads, dil,
                        ceil_mode, auto_pad)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", WINDOW_CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_sample_picks_equal_reference_bit_for_bit(case, dtype):
    spatial, kernel, strides, pads, dil, ceil_mode, auto_pad = case
    x = _input(spatial, dtype).relu() + (torch.rand(2, 3, *spatial) < 0.2).to(dtype)
    for seed in (0, 12345, -3):
        y = stochastic_pool(x, kernel, strides, pads, dil, ceil_mode, auto_pad, "sample", seed)
        expected = ref.pool(x.double().numpy(), lambda v, e: ref.stochastic_sample_window(v, seed, e), kernel,
                            strides, pads, dil, ceil_mode, auto_pad)
        np.testing.assert_array_equal(y.double().numpy(), expected.astype(x.numpy().dtype).astype(np.float64))


def test_sample_is_reproducible_and_seed_dependent():
    x = torch.rand(2, 4, 16, 16)
    a = F.stochastic_pool2d(x, 2, mode="sample", seed=7)
    b = F.stochastic_pool2d(x, 2, mode="sample", seed=7)
    c = F.stochastic_pool2d(x, 2, mode="sample", seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pick_frequencies_match_probabilities():
    """Chi-square test over 40,000 independent windows (one counter each), fixed seeds."""
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, -5.0])  # p = (0, .1, .2, .3, .4, 0)
    windows = values.repeat(40_000, 1)
    counts = torch.zeros(len(values))
    for seed in (11, 22):
        y = F.stochastic_pool_reduce(windows, dim=1, mode="sample", seed=seed)
        counts += torch.stack([(y == v).sum() for v in values]).float()
    p = values.clamp_min(0) / values.clamp_min(0).sum()
    assert counts[0] == 0 and counts[-1] == 0  # zero and negative values are never picked
    n = counts.sum()
    chi2 = float(((counts[1:5] - n * p[1:5]) ** 2 / (n * p[1:5])).sum())
    assert chi2 < 21.1, chi2  # df=3, significance 1e-4; deterministic because the seeds are fixed


def test_all_zero_or_negative_window_outputs_zero():
    x = torch.tensor([[[[0.0, -1.0], [-2.0, 0.0]]]])
    for mode in ("expectation", "sample"):
        assert F.stochastic_pool2d(x, 2, mode=mode, seed=1).item() == 0.0


def test_expectation_gradcheck():
    x = _input((5, 6)).abs().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: F.stochastic_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda t: F.stochastic_pool_reduce(t, (1,), True), (x,))


def test_sample_gradient_goes_to_the_picked_element():
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64).requires_grad_()
    y = F.stochastic_pool2d(x, 2, mode="sample", seed=5)
    y.sum().backward()
    # each 2x2 window routes exactly one unit of gradient, to an element equal to its output
    g = x.grad.reshape(1, 2, 3, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 2, 3, 3, 4)
    v = x.detach().reshape(1, 2, 3, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 2, 3, 3, 4)
    assert torch.equal(g.sum(-1), torch.ones_like(y))
    torch.testing.assert_close((g * v).sum(-1), y.detach())


def test_reduce_sample_matches_reference():
    x = _input((3, 4), torch.float32).relu()
    y = reduce_stochastic_pool(x, [1], True, "sample", 99)
    expected = ref.reduce(x.double().numpy(), lambda v, e: ref.stochastic_sample_window(v, 99, e), [1], True)
    np.testing.assert_array_equal(y.double().numpy(), expected.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("seed", [0, 31337, -(2**40) - 7])
def test_sample_ties_pick_the_first_cum_above_t(seed):
    """Windows [u, 1 - u], u the uniform of their element: cum_0 == t exactly, so the
    pick is 1 - u; a pick by cum >= t would return u."""
    x, picks = ref.tie_windows(seed, 300)
    y = stochastic_pool(torch.from_numpy(x)[None], [2], [2], [], [], False, "NOTSET", "sample", seed)
    np.testing.assert_array_equal(y[0, :, 0].numpy(), picks)
    y = reduce_stochastic_pool(torch.from_numpy(x), [1], False, "sample", seed)
    np.testing.assert_array_equal(y.numpy(), picks)
    # float64 input: the pick is made on float32 r, the picked value returned in float64
    y = reduce_stochastic_pool(torch.from_numpy(x).double(), [1], False, "sample", seed)
    np.testing.assert_array_equal(y.numpy(), picks.astype(np.float64))


def test_reduce_expectation_matches_reference():
    x = _input((3, 4))
    y = reduce_stochastic_pool(x, [2, 3], False, "expectation", 0)
    expected = ref.reduce(x.numpy(), lambda v, _: ref.stochastic_expectation_window(v), [2, 3], False)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)


def test_opcheck():
    x = torch.rand(2, 3, 6, 6).requires_grad_()
    torch.library.opcheck(stochastic_pool, (x, [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], False, "NOTSET", "expectation", 0))
    torch.library.opcheck(stochastic_pool, (x, [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], True, "NOTSET", "sample", 4))
    torch.library.opcheck(reduce_stochastic_pool, (x, [1], True, "sample", 3))


def test_module_samples_in_training_and_weights_in_eval():
    x = torch.rand(1, 2, 8, 8)
    m = StochasticPool2d(2)
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(1)
    b = m(x)
    assert torch.equal(a, b)  # seed=None draws from torch's generator: reproducible under manual_seed
    assert not torch.equal(a, m(x))
    m.eval()
    torch.testing.assert_close(m(x), F.stochastic_pool2d(x, 2, mode="expectation"))
    r = StochasticPoolReduce(dim=1, keepdim=True, seed=3)
    torch.testing.assert_close(r(x), F.stochastic_pool_reduce(x, 1, True, "sample", 3))


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        F.stochastic_pool2d(torch.rand(1, 1, 4, 4), 2, mode="random")
    with pytest.raises(ValueError, match="mode"):
        F.stochastic_pool_reduce(torch.rand(1, 1, 4, 4), 1, mode="max")
