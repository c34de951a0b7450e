"""Shape inference of every ``poolexport``-domain op (poolexport/onnx/domain.py) against
the shapes ONNX Runtime, with poolexport's custom-op library, actually produces.

A generated grid: every 1-D window of kernel, stride and dilation 1..3, begin/end pads
0..2 each (asymmetric included), ceil_mode 0/1 and every auto_pad; 2-D and 3-D windows
drawn by hypothesis (per-axis attributes all different, so an axis or begin/end mix-up
shows); the reduce ops over every axes subset (positive and negative spellings, absent
and empty) with keepdims 0/1 on ranks 1-4. Each is inferred with

* fully concrete dims (must equal ONNX Runtime's output shape, or both must refuse),
* a symbolic batch/channel with concrete spatial sizes (symbols kept, spatial exact),
* symbolic spatial sizes: the symbol is kept exactly when the window keeps the size
  (ONNX Runtime's output equals the input size at every tested size), unknown otherwise,
  never a wrong name or value,
* unknown (unnamed) dims: unknown out, N and C passed through.

ONNX Runtime's output is the oracle: one session per (op, attributes) with a fully
symbolic input, run at several sizes.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import poolexport.onnx  # noqa: F401  (registers the poolexport schemas)

ort = pytest.importorskip("onnxruntime")
pxort = pytest.importorskip("poolexport.ort")

WINDOWED = ("SoftPool", "StochasticPool")
REDUCE = ("ReduceSoftPool", "ReduceStochasticPool")
N, C = 2, 3
SIZES_1D = (1, 2, 3, 4, 5, 6, 7, 8, 11, 12)  # small ones make windows that do not fit


def _library_options():
    try:
        so = pxort.session_options()
    except RuntimeError as exc:  # library not built
        pytest.skip(str(exc))
    so.log_severity_level = 3  # a refused size is an expected outcome here
    return so


@pytest.fixture(scope="module")
def so():
    return _library_options()


def one_node(op: str, attrs: dict, shape, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], domain="poolexport",
                            **{k: v for k, v in attrs.items() if not (isinstance(v, list) and not v)})
    node.attribute.extend(helper.make_attribute(k, [], attr_type=onnx.AttributeProto.INTS)
                          for k, v in attrs.items() if isinstance(v, list) and not v)  # e.g. axes=[]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("poolexport", 1)],
                             ir_version=10)


def unknown(d) -> bool:
    return d is None or d == "" or (isinstance(d, str) and d.startswith("unk__"))


def infer(op, attrs, shape, elem=TensorProto.FLOAT):
    """(elem_type, dims) of the inferred output; dims hold ints, names or None (unknown)."""
    out = onnx.shape_inference.infer_shapes(one_node(op, attrs, shape, elem), strict_mode=True).graph.output[0]
    tt = out.type.tensor_type
    assert tt.HasField("shape"), f"{op} {attrs} {shape}: no shape inferred"
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return tt.elem_type, [None if unknown(d) else d for d in dims]


class Oracle:
    """ONNX Runtime's output shape for a given input shape (None: it refused the input)."""

    def __init__(self, so, op, attrs, rank):
        names = [f"a{i}" for i in range(rank)]
        self.sess = ort.InferenceSession(one_node(op, attrs, names).SerializeToString(), so,
                                         providers=["CPUExecutionProvider"])
        self.cache = {}

    def __call__(self, shape):
        shape = tuple(shape)
        if shape not in self.cache:
            try:
                self.cache[shape] = list(self.sess.run(None, {"x": np.zeros(shape, np.float32)})[0].shape)
            except Exception:  # ORT's InvalidArgument / Fail: the window does not fit
                self.cache[shape] = None
        return self.cache[shape]


def _window_fits(attrs, spatial) -> bool:
    k = len(attrs["kernel_shape"])
    auto = attrs.get("auto_pad", "NOTSET")
    pads = attrs.get("pads", [0] * 2 * k)
    dil = attrs.get("dilations", [1] * k)
    for i, n in enumerate(spatial):
        span = (attrs["kernel_shape"][i] - 1) * dil[i] + 1
        room = n if auto != "NOTSET" else n + pads[i] + pads[k + i]
        if auto in ("NOTSET", "VALID") and span > room:
            return False
    return True


def check_windowed(so, op, attrs, spatial_sets):
    """Every inference mode against ONNX Runtime for one op and attribute set.

    ``spatial_sets``: concrete spatial shapes to try (some may be too small for the window:
    then inference must refuse exactly where ONNX Runtime does)."""
    k = len(attrs["kernel_shape"])
    oracle = Oracle(so, op, attrs, k + 2)
    fitting = []
    for spatial in spatial_sets:
        want = oracle((N, C, *spatial))
        assert (want is not None) == _window_fits(attrs, spatial), (attrs, spatial, want)
        if want is None:
            with pytest.raises(Exception, match="exceeds"):
                infer(op, attrs, [N, C, *spatial])
            continue
        fitting.append((spatial, want))
        # fully concrete
        elem, got = infer(op, attrs, [N, C, *spatial])
        assert elem == TensorProto.FLOAT
        assert got == want, f"{op} {attrs} input {[N, C, *spatial]}: inferred {got}, ONNX Runtime {want}"
        # symbolic batch and channel, concrete spatial
        _, got = infer(op, attrs, ["batch", "chan", *spatial])
        assert got == ["batch", "chan", *want[2:]], f"{op} {attrs} input [batch, chan, {spatial}]: {got}"
        _, got = infer(op, attrs, [N, "chan", *spatial])
        assert got == [N, "chan", *want[2:]], f"{op} {attrs} input [{N}, chan, {spatial}]: {got}"
    assert fitting, f"no size fits {attrs}; widen the grid"

    # symbolic spatial, one axis at a time (the others concrete) and all at once: the
    # symbol stays exactly where ONNX Runtime's output equals the input size at every
    # fitting size, else the dim is unknown (never a wrong name or number)
    names = [f"s{i}" for i in range(k)]
    keeps = [all(want[2 + i] == spatial[i] for spatial, want in fitting) for i in range(k)]
    for i in range(k):
        for spatial, want in fitting[:2]:
            shape = [N, C, *spatial]
            shape[2 + i] = names[i]
            _, got = infer(op, attrs, shape)
            expect = [*want[:2 + i], names[i] if keeps[i] else None, *want[3 + i:]]
            assert got == expect, f"{op} {attrs} input {shape}: inferred {got}, expected {expect} " \
                                  f"(ONNX Runtime at {spatial}: {want})"
    _, got = infer(op, attrs, ["batch", C, *names])
    assert got == ["batch", C, *[names[i] if keeps[i] else None for i in range(k)]], (op, attrs, got)
    # unknown (unnamed) spatial dims: unknown out, N and C pass through
    _, got = infer(op, attrs, [N, "chan", *[None] * k])
    assert got == [N, "chan", *[None] * k], (op, attrs, got)


# ------------------------------------------------------------------ 1-D: exhaustive
def _grid_1d():
    for kk, s, d in itertools.product((1, 2, 3), repeat=3):
        for b, e in itertools.product((0, 1, 2), repeat=2):
            for ceil in (0, 1):
                attrs = dict(kernel_shape=[kk], strides=[s], dilations=[d], pads=[b, e], ceil_mode=ceil)
                # some leave an attribute at its ONNX default (strides 1, dilations 1, pads 0)
                if s == 1 and (kk + b + e) % 2 == 0:
                    del attrs["strides"]
                if d == 1 and not ceil:
                    del attrs["dilations"]
                if b == e == 0 and ceil:
                    del attrs["pads"]
                yield attrs
        for auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
            yield dict(kernel_shape=[kk], strides=[s], dilations=[d], auto_pad=auto, ceil_mode=(kk + s) % 2)


GRID_1D = list(_grid_1d())


@pytest.mark.parametrize("op", WINDOWED)
def test_windowed_1d_grid_matches_onnxruntime(so, op):
    """All 567 one-axis windows of the grid, at ten sizes each."""
    for attrs in GRID_1D:
        check_windowed(so, op, attrs, [(n,) for n in SIZES_1D])


def test_1d_grid_holds_the_cases_that_matter():
    """The grid really holds what the mutants need: a symbol kept only thanks to the end
    pad, one lost only through dilation, and ceil_mode windows dropped at the end."""
    have = {(a["kernel_shape"][0], a.get("strides", [1])[0], a.get("dilations", [1])[0], tuple(a.get("pads", (0, 0))),
             a["ceil_mode"]) for a in GRID_1D if a.get("auto_pad", "NOTSET") == "NOTSET"}
    assert (2, 1, 1, (0, 1), 0) in have  # n + 0 + 1 - 2 + 1 = n: kept through the end pad
    assert (2, 1, 2, (1, 0), 0) in have  # span 3: n - 1, not n
    assert (2, 2, 1, (1, 1), 1) in have  # ceil drops a window starting in the end padding
    assert sum(1 for a in GRID_1D if a.get("auto_pad", "NOTSET") != "NOTSET") == 81
    for name in ("strides", "dilations", "pads"):  # defaults are exercised too
        assert any(name not in a for a in GRID_1D if a.get("auto_pad", "NOTSET") == "NOTSET"), name


# ------------------------------------------------------------------ 2-D and 3-D: generated
@st.composite
def windows_nd(draw, k):
    kernel = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    strides = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    dil = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dil, ceil_mode=draw(st.integers(0, 1)))
    auto = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto == "NOTSET":
        attrs["pads"] = draw(st.lists(st.integers(0, 2), min_size=2 * k, max_size=2 * k))
    else:
        attrs["auto_pad"] = auto
    return attrs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attrs=windows_nd(2), sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=3, max_size=4),
       op=st.sampled_from(WINDOWED))
def test_windowed_2d_generated_matches_onnxruntime(so, attrs, sizes, op):
    check_windowed(so, op, attrs, [(9, 10), (12, 11), *sizes])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attrs=windows_nd(3), sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
                                           min_size=2, max_size=3),
       op=st.sampled_from(WINDOWED))
def test_windowed_3d_generated_matches_onnxruntime(so, attrs, sizes, op):
    check_windowed(so, op, attrs, [(7, 8, 9), *sizes])


ASYMMETRIC = [  # end pad != begin pad on each axis, different per axis, dilations > 1
    dict(kernel_shape=[2, 3], strides=[1, 1], dilations=[1, 2], pads=[0, 2, 1, 2]),  # axis 0 kept via end pad
    dict(kernel_shape=[3, 2], strides=[1, 1], dilations=[2, 1], pads=[2, 0, 2, 1]),  # both kept
    dict(kernel_shape=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[2, 0, 0, 2]),  # both kept, mirrored
    dict(kernel_shape=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[2, 0, 1, 1]),  # axis 0 kept, axis 1 kept
    dict(kernel_shape=[3, 3], strides=[1, 1], dilations=[1, 1], pads=[2, 1, 0, 0]),  # neither kept
    dict(kernel_shape=[2, 2], strides=[2, 1], dilations=[1, 3], pads=[1, 1, 0, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2, 2], strides=[1, 1, 1], dilations=[1, 2, 1], pads=[1, 2, 0, 0, 0, 1]),
    dict(kernel_shape=[3, 1, 2], strides=[1, 2, 1], dilations=[2, 1, 3], pads=[0, 0, 2, 4, 0, 1], ceil_mode=1),
]


@pytest.mark.parametrize("attrs", ASYMMETRIC, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("op", WINDOWED)
def test_asymmetric_pads_with_symbolic_dims(so, op, attrs):
    k = len(attrs["kernel_shape"])
    sets = [(9, 10, 11)[:k], (6, 7, 8)[:k], (12, 5, 13)[:k]]
    check_windowed(so, op, attrs, sets)


def test_symbolic_symbol_kept_only_through_the_end_pad():
    """The two neighbour bugs, spelled out: kernel 2, stride 1, pads [0, 1] keeps ``w``
    (w + 0 + 1 - 2 + 1); pads [1, 0] with kernel 3 gives w - 1 (unknown), as does dilation 2
    with kernel 2 and pads [1, 0]."""
    assert infer("SoftPool", dict(kernel_shape=[2], pads=[0, 1]), ["n", 3, "w"])[1] == ["n", 3, "w"]
    assert infer("SoftPool", dict(kernel_shape=[3], pads=[1, 0]), ["n", 3, "w"])[1] == ["n", 3, None]
    assert infer("SoftPool", dict(kernel_shape=[2], pads=[1, 0], dilations=[2]), ["n", 3, "w"])[1] == ["n", 3, None]
    assert infer("SoftPool", dict(kernel_shape=[2], pads=[1, 1], dilations=[2]), ["n", 3, "w"])[1] == ["n", 3, "w"]
    # pads are [begin_h, begin_w, end_h, end_w]
    for pads in ([0, 1, 2, 0], [2, 0, 0, 1]):  # h + 2 - 3 + 1 = h, w + 1 - 2 + 1 = w
        assert infer("StochasticPool", dict(kernel_shape=[3, 2], pads=pads), ["n", 3, "h", "w"])[1] == ["n", 3, "h", "w"]
    # h + 1 + 0 - 3 + 1 = h - 1 (begin used as end would say h), w + 2 - 2 + 1 = w + 1
    assert infer("StochasticPool", dict(kernel_shape=[3, 2], pads=[1, 1, 0, 1]), ["n", 3, "h", "w"])[1] == \
        ["n", 3, None, None]


def test_float16_and_dilated_concrete_shape():
    elem, got = infer("SoftPool", dict(kernel_shape=[3, 2], dilations=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1]),
                      ["n", 4, 13, 7], TensorProto.FLOAT16)
    assert elem == TensorProto.FLOAT16
    # height: (13 + 3 - 7) // 2 + 1 = 5; width: (7 + 1 - 3) // 1 + 1 = 6
    assert got == ["n", 4, 5, 6]


# ------------------------------------------------------------------ reduce ops
def _reduce_cases():
    for rank in (1, 2, 3, 4):
        for keepdims in (0, 1, None):  # None: attribute absent (ReduceMean's default, 1)
            yield rank, None, keepdims  # axes absent: all
            yield rank, [], keepdims  # empty: all
            for r in range(1, rank + 1):
                for subset in itertools.combinations(range(rank), r):
                    yield rank, list(subset), keepdims
                    yield rank, [a - rank for a in reversed(subset)], keepdims  # negative, unsorted
                    if r > 1:
                        yield rank, [subset[-1], *[a - rank for a in subset[:-1]]], keepdims  # mixed


REDUCE_CASES = list(_reduce_cases())
SIZES = (2, 3, 4, 5)  # all different: an axis mix-up shows


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_grid_matches_onnxruntime(so, op):
    for rank, axes, keepdims in REDUCE_CASES:
        attrs = {} if axes is None else {"axes": axes}
        if keepdims is None:
            keepdims = 1
        else:
            attrs["keepdims"] = keepdims
        oracle = Oracle(so, op, attrs, rank)
        shape = list(SIZES[:rank])
        want = oracle(shape)
        assert want is not None, (op, attrs, shape)
        elem, got = infer(op, attrs, shape)
        assert elem == TensorProto.FLOAT
        assert got == want, f"{op} {attrs} input {shape}: inferred {got}, ONNX Runtime {want}"
        other = [s + 3 for s in shape]
        want2 = oracle(other)
        red = set(range(rank)) if not axes else {a % rank for a in axes}

        def expected(dims):
            return [1 if i in red else dims[i] for i in range(rank) if keepdims or i not in red]

        assert want == expected(shape) and want2 == expected(other), (op, attrs, want, want2)  # the oracle's rule
        # every dim symbolic: a kept axis keeps its name, a reduced one is 1 (keepdims) or gone
        for dims in ([f"d{i}" for i in range(rank)], ["batch", *shape[1:]], [*shape[:-1], "last"]):
            _, got = infer(op, attrs, dims)
            assert got == expected(dims), f"{op} {attrs} input {dims}: inferred {got}, expected {expected(dims)}"
            for conc, w in ((shape, want), (other, want2)):  # and it agrees with ONNX Runtime at two sizes
                named = {d: conc[i] for i, d in enumerate(dims) if isinstance(d, str)}
                if all(isinstance(d, str) for d in dims) or conc is shape:
                    assert [named.get(d, d) for d in got] == w, (op, attrs, dims, got, w)


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_rejects_bad_axes_like_onnxruntime(so, op):
    for attrs in (dict(axes=[3]), dict(axes=[-4]), dict(axes=[0, -3])):
        with pytest.raises(Exception):
            infer(op, attrs, [2, 3, 4])
        oracle = Oracle(so, op, attrs, 3)
        assert oracle((2, 3, 4)) is None, attrs
