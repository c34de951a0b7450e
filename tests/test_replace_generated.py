"""``replace_pools`` (poolexport/nn/replace.py) on generated module trees.

Hypothesis draws trees of depth 1-3 built from nn.Sequential, nn.ModuleList,
nn.ModuleDict and a custom module (children as attributes), with up to 13 children per
container (so names "1" and "10", "1.0" and "10.0" live side by side), whose leaves are
every pool kind torch has (MaxPool/AvgPool/AdaptiveAvgPool/AdaptiveMaxPool, 1-D to 3-D,
global or not, with return_indices), a stand-in for timm's SelectAdaptivePool2d, and
layers that are not pools. It also draws the pool name, the ``create_pool`` options and the
``types``/``filter`` arguments. The expected outcome is computed here from the tree
itself, independently of replace.py:

* the returned names are exactly the replaceable modules, in pre-order, minus those
  inside a replaced one (timm's inner pool) or refused by ``types``/``filter``;
* each new module is the right poolexport class, with the old geometry (kernel, stride,
  padding, dilation, ceil_mode) and every requested option (beta, seed, p, mean, alpha,
  learn_alpha, count_include_pad, timm's flatten);
* every other module is the same object as before, parameters untouched;
* a module registered under two names (an alias) is replaced under both by one module;
* the new pools give the old output shape;
* train/eval mode is kept (an eval model: issue 23).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import poolexport.nn as pnn

POOLS = ("avg", "max", "l2", "lp", "rms", "soft", "stochastic", "mixed", "avgmax", "catavgmax")

WINDOW_CLASS = {"avg": "AvgPool", "max": "MaxPool", "l2": "LpPool", "lp": "LpPool", "rms": "LpPool",
                "soft": "SoftPool", "stochastic": "StochasticPool", "mixed": "MixedPool", "avgmax": "AvgMaxPool",
                "catavgmax": "CatAvgMaxPool"}
GLOBAL_CLASS = {"avg": "GlobalAvgPool", "max": "GlobalMaxPool", "l2": "GlobalLpPool", "lp": "GlobalLpPool",
                "rms": "GlobalLpPool", "soft": "GlobalSoftPool", "stochastic": "GlobalStochasticPool",
                "mixed": "GlobalMixedPool", "avgmax": "GlobalAvgMaxPool", "catavgmax": "GlobalCatAvgMaxPool"}


class SelectAdaptivePool2d(nn.Module):
    """The shape of timm.layers.SelectAdaptivePool2d (recognised by class name)."""

    def __init__(self, pool_type="avg", flatten=False, output_size=1):
        super().__init__()
        self.pool_type = pool_type
        self.pool = nn.AdaptiveAvgPool2d(output_size) if pool_type else nn.Identity()
        self.flatten = nn.Flatten(1) if flatten else nn.Identity()

    def forward(self, x):
        return self.flatten(self.pool(x))


class Custom(nn.Module):
    """A user's module: children registered as attributes."""

    def __init__(self, children: dict):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


WINDOW_TYPES = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d,
                ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d, ("avg", 3): nn.AvgPool3d}
ADAPTIVE_TYPES = {("avg", 1): nn.AdaptiveAvgPool1d, ("avg", 2): nn.AdaptiveAvgPool2d, ("avg", 3): nn.AdaptiveAvgPool3d,
                  ("max", 1): nn.AdaptiveMaxPool1d, ("max", 2): nn.AdaptiveMaxPool2d, ("max", 3): nn.AdaptiveMaxPool3d}
DIMS = {cls: d for (_, d), cls in list(WINDOW_TYPES.items()) + list(ADAPTIVE_TYPES.items())}


# ------------------------------------------------------------------ leaves
def _size(draw, dims, lo, hi):
    if draw(st.booleans()):
        return draw(st.integers(lo, hi))
    return tuple(draw(st.integers(lo, hi)) for _ in range(dims))


@st.composite
def window_pool(draw):
    kind, dims = draw(st.sampled_from(["max", "avg"])), draw(st.integers(1, 3))
    kernel = _size(draw, dims, 1, 3)
    ks = (kernel,) * dims if isinstance(kernel, int) else kernel
    stride = draw(st.one_of(st.none(), st.just("size")))
    stride = None if stride is None else _size(draw, dims, 1, 3)
    # torch: padding at most half the kernel
    pad = draw(st.integers(0, min(ks) // 2)) if draw(st.booleans()) else tuple(
        draw(st.integers(0, k // 2)) for k in ks)
    kw = dict(kernel_size=kernel, stride=stride, padding=pad, ceil_mode=draw(st.booleans()))
    if kind == "max":
        kw["dilation"] = _size(draw, dims, 1, 2)
        kw["return_indices"] = draw(st.integers(0, 5)) == 0
    else:
        kw["count_include_pad"] = draw(st.booleans())
    return WINDOW_TYPES[kind, dims](**kw)


@st.composite
def adaptive_pool(draw):
    kind, dims = draw(st.sampled_from(["max", "avg"])), draw(st.integers(1, 3))
    size = draw(st.sampled_from([1, 1, 2, "tuple1", "tuple12", "none"]))
    if size == "tuple1":
        size = (1,) * dims
    elif size == "tuple12":
        size = (1,) * (dims - 1) + (2,)
    elif size == "none":
        size = (None,) * dims  # keeps the input size: not a global pool
    kw = dict(return_indices=draw(st.integers(0, 5)) == 0) if kind == "max" else {}
    return ADAPTIVE_TYPES[kind, dims](size, **kw)


@st.composite
def timm_pool(draw):
    return SelectAdaptivePool2d(draw(st.sampled_from(["avg", "avg", ""])), draw(st.booleans()),
                                draw(st.sampled_from([1, 1, 2])))


def other_layer():
    return st.sampled_from(["identity", "relu", "conv", "bn", "flatten"]).map(lambda n: {
        "identity": nn.Identity(), "relu": nn.ReLU(), "conv": nn.Conv2d(2, 2, 1), "bn": nn.BatchNorm2d(2),
        "flatten": nn.Flatten()}[n])


leaf = st.one_of(window_pool(), window_pool(), adaptive_pool(), timm_pool(), other_layer())


# ------------------------------------------------------------------ trees
def _container(kind, children):
    if kind == "sequential":
        return nn.Sequential(*children)
    if kind == "list":
        return nn.ModuleList(children)
    names = [["1", "10", "11", "2", "1x", "x1", "12", "100", "3", "4", "5", "6", "7"][i] for i in range(len(children))]
    if kind == "dict":
        return nn.ModuleDict(dict(zip(names, children)))
    return Custom({f"p{n}": c for n, c in zip(names, children)})


@st.composite
def tree(draw, depth):
    kind = draw(st.sampled_from(["sequential", "list", "dict", "custom"]))
    count = draw(st.sampled_from([1, 2, 3, 11, 12, 13]))
    children = []
    for _ in range(count):
        if children and draw(st.integers(0, 9)) == 0:  # an alias: one module under two names
            children.append(children[draw(st.integers(0, len(children) - 1))])
        elif depth > 1 and draw(st.integers(0, 3)) == 0:
            children.append(draw(tree(depth - 1)))
        else:
            children.append(draw(leaf))
    return _container(kind, children)


@st.composite
def options(draw):
    opts = {}
    for name, strat in (("beta", st.sampled_from([0.0, 0.5, -2.0, 3.0, 7.25])),
                        ("seed", st.integers(0, 2**40)),
                        ("p", st.sampled_from([1.0, 3.0, 4.5])),
                        ("mean", st.booleans()),
                        ("alpha", st.sampled_from([0.0, 0.25, 0.8, 1.0])),
                        ("learn_alpha", st.booleans()),
                        ("count_include_pad", st.booleans())):
        if draw(st.booleans()):
            opts[name] = draw(strat)
    return opts


# ------------------------------------------------------------------ the expectation, from the tree
def _global(output_size) -> bool:
    sizes = output_size if isinstance(output_size, tuple) else (output_size,)
    return all(s == 1 for s in sizes)


def replaceable(m: nn.Module) -> bool:
    if type(m) in WINDOW_TYPES.values():
        return not getattr(m, "return_indices", False)
    if type(m) in ADAPTIVE_TYPES.values():
        return not getattr(m, "return_indices", False) and _global(m.output_size)
    if type(m).__name__ == "SelectAdaptivePool2d":
        return bool(m.pool_type) and _global(m.pool.output_size)
    return False


def walk(module, prefix=""):
    """(name, module) in pre-order, written here without named_modules."""
    for name, child in module._modules.items():
        full = f"{prefix}.{name}" if prefix else name
        yield full, child
        yield from walk(child, full)


def expected_names(model, types=None, filter=None):
    names = []
    for name, m in walk(model):
        if types is not None and not isinstance(m, types):
            continue
        if any(name.split(".")[:len(done.split("."))] == done.split(".") for done in names):
            continue  # inside a replaced module
        if filter is not None and not filter(name, m):
            continue
        if replaceable(m):
            names.append(name)
    return names


def check_new_module(name, old, new, pool, opts):
    assert type(new).__module__.startswith("poolexport."), (name, type(new))
    window = type(old) in WINDOW_TYPES.values()
    if window:
        dims = DIMS[type(old)]
        assert type(new).__name__ == f"{WINDOW_CLASS[pool]}{dims}d", (name, type(new).__name__)
        assert new.dims == dims
        assert new.kernel_size == old.kernel_size, name
        assert new.stride == old.stride, name
        assert new.padding == old.padding, name
        assert new.dilation == getattr(old, "dilation", 1), name
        assert new.ceil_mode == old.ceil_mode, name
    else:
        assert type(new).__name__ == GLOBAL_CLASS[pool], (name, type(new).__name__)
        timm = type(old).__name__ == "SelectAdaptivePool2d"
        assert new.flatten == (timm and isinstance(old.flatten, nn.Flatten)), name
    # the options that reach this pool
    if pool == "soft":
        assert new.beta == opts.get("beta", 1.0), name
    if pool == "stochastic":
        assert new.seed == opts.get("seed"), name
    if pool in ("l2", "lp", "rms"):
        assert new.norm_type == ({"lp": float(opts.get("p", 2.0))}.get(pool, 2.0)), name
        assert new.mean == {"l2": False, "rms": True}.get(pool, opts.get("mean", False)), name
    if pool == "mixed":
        assert new.learn_alpha == opts.get("learn_alpha", False), name
        alpha = float(torch.as_tensor(new.alpha).detach())
        assert math.isclose(alpha, opts.get("alpha", 0.5), abs_tol=1e-5), (name, alpha)
    if pool == "avg" and window:
        assert new.count_include_pad == opts.get("count_include_pad", False), name
    if pool == "max" and window:
        assert new.return_indices is False


def _input_for(old):
    if type(old).__name__ == "SelectAdaptivePool2d":
        return torch.randn(2, 3, 5, 6)
    dims = DIMS[type(old)]
    return torch.randn(2, 3, *(9, 8, 7)[:dims])


def check_shapes(old, new, pool):
    x = _input_for(old)
    with torch.no_grad():
        want = list(old(x).shape)
        got = list(new(x).shape)
    if pool == "catavgmax":
        want[1] *= 2
    assert got == want, (old, new)


def snapshot(model):
    return {name: (m, type(m), {k: v.detach().clone() for k, v in m.named_parameters(recurse=False)})
            for name, m in walk(model)}


def _filter_for(kind):
    if kind is None:
        return None
    if kind == "no-1":  # refuse exactly "1": "10", "11", "1x", "1.0" ... stay eligible
        return lambda name, m: name != "1"
    if kind == "even-depth":
        return lambda name, m: name.count(".") % 2 == 0
    return lambda name, m: not name.endswith("0")


TYPE_CHOICES = [None, (nn.MaxPool2d,), (nn.AvgPool1d, nn.AvgPool3d), (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d),
                (SelectAdaptivePool2d,), (nn.AdaptiveAvgPool2d,)]


def run_case(model, pool, opts, types, filter_kind):
    before = snapshot(model)
    filt = _filter_for(filter_kind)
    want = expected_names(model, types, filt)
    got = pnn.replace_pools(model, pool, types=types, filter=filt, **opts)
    assert got == want, f"replaced {got}, expected {want}"
    assert len(got) == len(set(got))
    after = dict(walk(model))
    replaced = set(got)
    for a in got:  # aliases stay aliases
        for b in got:
            assert (before[a][0] is before[b][0]) == (after[a] is after[b]), (a, b)
    for name, (old, old_type, params) in before.items():
        if name in replaced:
            new = after[name]
            assert new is not old
            check_new_module(name, old, new, pool, opts)
            assert new.training == old.training, f"{name}: training {new.training}, was {old.training}"
        elif not any(name.startswith(r + ".") for r in replaced):
            assert after.get(name) is old, f"{name} was touched"
            assert type(old) is old_type
            for k, v in params.items():
                assert torch.equal(getattr(old, k).detach(), v), (name, k)
    # nothing replaceable is left where replacement was asked (no types/filter)
    if types is None and filter_kind is None:
        assert expected_names(model) == [], "a pool was left"
    return before, after, got


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(depth=st.integers(1, 3), data=st.data(), pool=st.sampled_from(POOLS), opts=options(),
       types=st.sampled_from(TYPE_CHOICES), filter_kind=st.sampled_from([None, None, "no-1", "even-depth", "no-0"]))
def test_generated_trees(depth, data, pool, opts, types, filter_kind):
    model = data.draw(tree(depth))
    run_case(model, pool, opts, types, filter_kind)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), pool=st.sampled_from(POOLS), opts=options())
def test_generated_trees_keep_shapes(data, pool, opts):
    """The swapped pools give the old output shapes (catavgmax: twice the channels)."""
    model = data.draw(tree(2))
    before, after, got = run_case(model, pool, opts, None, None)
    for name in got:
        check_shapes(before[name][0], after[name], pool)


# ------------------------------------------------------------------ the cases spelled out
def _pools(n, dims=2):
    cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    return [cls(2) if i % 2 else nn.AvgPool2d(3, 1, 1) if dims == 2 else cls(3, 1, 1) for i in range(n)]


@pytest.mark.parametrize("n", [11, 12, 21, 101])
def test_more_than_ten_children(n):
    """A name-prefix match without the dot would skip "10".."19" after "1" (and "100" after
    "10"): every child is replaced."""
    model = nn.Sequential(*_pools(n))
    got = pnn.replace_pools(model, "soft", beta=2.5)
    assert got == [str(i) for i in range(n)]
    assert all(isinstance(m, (pnn.SoftPool2d,)) and m.beta == 2.5 for m in model)


def test_nested_names_sharing_a_prefix():
    inner = lambda: nn.Sequential(*_pools(12))  # noqa: E731
    model = nn.Sequential(*[inner() for _ in range(11)])
    got = pnn.replace_pools(model, "max")
    assert got == [f"{i}.{j}" for i in range(11) for j in range(12)]
    d = nn.ModuleDict({"1": nn.MaxPool2d(2), "10": nn.MaxPool2d(3), "1x": nn.AdaptiveAvgPool2d(1),
                       "11": nn.Sequential(nn.MaxPool1d(2))})
    assert pnn.replace_pools(d, "l2") == ["1", "10", "1x", "11.0"]


def test_timm_inner_pool_is_not_replaced_twice_even_past_ten():
    model = nn.Sequential(*[SelectAdaptivePool2d("avg", bool(i % 2)) for i in range(12)])
    got = pnn.replace_pools(model, "soft", beta=4.0)
    assert got == [str(i) for i in range(12)]
    for i, m in enumerate(model):
        assert isinstance(m, pnn.GlobalSoftPool) and m.beta == 4.0 and m.flatten == bool(i % 2)


@pytest.mark.parametrize("make", [lambda: nn.AdaptiveAvgPool1d(1), lambda: nn.AdaptiveMaxPool2d((1, 1)),
                                  lambda: nn.AdaptiveAvgPool3d(1), lambda: SelectAdaptivePool2d("avg", True)],
                         ids=["adaptive-avg-1d", "adaptive-max-2d", "adaptive-avg-3d", "timm"])
@pytest.mark.parametrize("pool,opts,attr,value", [
    ("soft", dict(beta=-3.5), "beta", -3.5),
    ("soft", dict(beta=0.0), "beta", 0.0),
    ("stochastic", dict(seed=12345), "seed", 12345),
    ("lp", dict(p=3.0, mean=True), "norm_type", 3.0),
    ("lp", dict(p=3.0, mean=True), "mean", True),
    ("rms", dict(), "mean", True),
    ("mixed", dict(alpha=0.25), "alpha", 0.25),
    ("mixed", dict(learn_alpha=True), "learn_alpha", True),
])
def test_global_pools_get_every_option(make, pool, opts, attr, value):
    model = nn.Sequential(nn.Identity(), make())
    assert pnn.replace_pools(model, pool, **opts) == ["1"]
    got = getattr(model[1], attr)
    assert (math.isclose(float(got), value, abs_tol=1e-6) if attr == "alpha" else got == value), (attr, got)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("pool,opts,attr,value", [
    ("soft", dict(beta=-3.5), "beta", -3.5),
    ("stochastic", dict(seed=7), "seed", 7),
    ("lp", dict(p=4.0), "norm_type", 4.0),
    ("mixed", dict(alpha=1.0), "alpha", 1.0),
    ("avg", dict(count_include_pad=True), "count_include_pad", True),
])
def test_window_pools_get_every_option(dims, pool, opts, attr, value):
    old = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims](3, 2, 1, dilation=2, ceil_mode=True)
    model = nn.Sequential(old)
    assert pnn.replace_pools(model, pool, **opts) == ["0"]
    new = model[0]
    assert (new.kernel_size, new.stride, new.padding, new.dilation, new.ceil_mode) == (3, 2, 1, 2, True)
    assert getattr(new, attr) == value


def test_shared_pool_instance_is_replaced_everywhere():
    """One pool registered under two names (an alias) is replaced under both, by one new
    module, so the aliasing is kept."""
    shared = nn.MaxPool2d(2)
    model = Custom({"a": shared, "b": nn.Sequential(nn.ReLU(), shared)})
    got = pnn.replace_pools(model, "soft", beta=2.0)
    assert got == ["a", "b.1"]
    assert isinstance(model.a, pnn.SoftPool2d) and model.b[1] is model.a


def test_train_mode_model_keeps_train_mode():
    model = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    pnn.replace_pools(model, "stochastic")
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("pool", ["stochastic", "soft", "mixed"])
def test_eval_mode_model_keeps_eval_mode(pool):
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.MaxPool2d(2), nn.Sequential(*_pools(11)), nn.AdaptiveAvgPool2d(1))
    model.eval()
    pnn.replace_pools(model, pool)
    left = [name for name, m in model.named_modules() if m.training]
    assert not left, f"in train mode after replace_pools on an eval model: {left}"


def test_eval_model_stochastic_is_deterministic_and_exports():
    """Issue 23: on an eval model the new stochastic pools take the expectation (two eval
    forwards agree) and torch.export does not meet the sampling seed's data-dependent guard."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)).eval()
    pnn.replace_pools(model, "stochastic")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))


class _FastGlobalMean(nn.Module):
    """timm's FastAdaptiveAvgPool: always global, and without an ``output_size``."""

    def __init__(self, flatten):
        super().__init__()
        self.flatten = flatten

    def forward(self, x):
        return x.mean((2, 3), keepdim=not self.flatten)


def test_timm_fast_pool_without_output_size_is_global():
    """timm's pool_type 'fast' holds a pool with no output_size: it is global, so it is
    replaced (and the replacement flattens when timm's did)."""
    for flatten in (False, True):
        timm_pool = SelectAdaptivePool2d("avg", flatten=flatten)
        timm_pool.pool_type = "fast"
        timm_pool.pool = _FastGlobalMean(flatten)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), timm_pool)
        x = torch.randn(2, 3, 9, 9)
        want = model(x).shape
        assert pnn.replace_pools(model, "soft") == ["1"]
        assert type(model[1]).__module__.startswith("poolexport") and model(x).shape == want
