"""torch.compile with its default backend (inductor) on example networks: the compiled
forward, the input gradient, every parameter gradient and the batch-norm statistics match
eager PyTorch.

The pools are custom ops: inductor calls their kernels as they are and traces the graph
around them with their fake kernels, then fuses and reorders the torch ops in between
(convolutions, batch norm, attention MLPs). So the compiled network differs from eager
only by the float32 rounding of those reorderings; the pools' outputs and picks are the
eager ones. A wrong fake kernel (shape, dtype), a wrong autograd registration or a seed
that does not reach the kernel shows as an error or a mismatch. The networks compile
without graph breaks.

Networks (small widths and inputs: inductor's C++ build, not the arithmetic, is the cost):
* resnet_softpool with two stages: SoftPool2d downsampling, CBAM (global average and max
  descriptors, average and max across channels);
* newcbam_seed: StochasticPool2d 3x3 'same' windows (expectation in eval, sampling with a
  fixed seed in training) beside global average, max and RMS pools;
* mobilenet_se with the ten global pools of its SE blocks and classifier swapped by
  ``replace_pools``, alternately for SoftPool and stochastic pooling (fixed seed).

Sampling with ``seed=None`` (a fresh seed per training step, drawn inside the graph) is
compiled over several steps: one compilation, and the eager step's picks, gradients and
generator state from the same ``torch.manual_seed``.

Inductor's graph caches (FX graph, AOTAutograd) are off here: their key is the traced
graph's code and input shapes, not the shapes the fake kernels gave inside it, so a cached
build would hide a changed fake kernel. Every run traces and lowers afresh; the compiled
C++ stays cached by its generated source, so only the first run on a machine (or a run
after a change of the generated code) pays gcc's minutes on two cores.
"""
import copy

import pytest
import torch

import poolexport.nn as pnn

models = pytest.importorskip("poolexport.models", reason="poolexport.models is not installed")

pytestmark = pytest.mark.slow  # a cold inductor build of the five graphs: minutes on two cores

# float32. Eager and inductor differ by the reordered sums of the layers between the pools
# (batch-norm statistics, fused convolutions): relative 1e-4, and absolute 1e-5 of the
# tensor's largest magnitude (a sum over many positions, as the stem's weight gradient,
# carries its rounding in absolute terms); measured below a third of that here
FP32_RTOL, FP32_ATOL = 1e-4, 1e-5
SEED = 1234
STOCHASTIC = (pnn.StochasticPool1d, pnn.StochasticPool2d, pnn.StochasticPool3d, pnn.StochasticPoolReduce,
              pnn.GlobalStochasticPool)


@pytest.fixture(autouse=True)
def _fresh_graphs():
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def _close(got, want, what):
    atol = FP32_ATOL * max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


def _fixed_seeds(model):
    """Sampling pools with a fixed seed, so eager and compiled runs make the same picks."""
    for m in model.modules():
        if isinstance(m, STOCHASTIC):
            m.seed = SEED
    return model


def _step(run, model, x, w):
    """Output, input gradient and parameter gradients of ``run`` (the model or its compiled form)."""
    x = x.detach().clone().requires_grad_()
    out = run(x)
    (out * w).sum().backward()  # weighted: a plain sum's gradient through a softmax or a BN is ~0
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def _compare(model, shape, train: bool):
    torch._dynamo.reset()
    model.train(train)
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model)  # the default backend: inductor
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=gen)  # non-negative, as after a ReLU
    with torch.no_grad():
        out_shape = copy.deepcopy(model).eval()(x).shape  # a copy: the batch-norm statistics stay as they are
    w = torch.randn(out_shape, generator=gen)
    want, want_dx, want_dp = _step(model, model, x, w)
    got, got_dx, got_dp = _step(compiled, compiled_model, x, w)
    _close(got, want, "forward")
    _close(got_dx, want_dx, "input gradient")
    assert want_dp.keys() == got_dp.keys()
    for name, g in want_dp.items():
        assert g is not None and got_dp[name] is not None, name
        _close(got_dp[name], g, f"gradient of {name}")
    for (name, a), (_, b) in zip(model.named_buffers(), compiled_model.named_buffers()):
        _close(b.double(), a.double(), f"buffer {name}")


def _gamma(model, value=0.5):
    # NewCBAM-style blocks start as the identity (gamma = 0), which would hide their pools
    for m in model.modules():
        if isinstance(m, (models.NewCBAM, models.NewCBAMSeed)):
            torch.nn.init.constant_(m.gamma, value)
    return model


def test_softpool_network_compiles_and_matches_eager():
    torch.manual_seed(0)
    model = models.create_model("resnet_softpool", depths=(1, 1))
    assert any(isinstance(m, pnn.SoftPool2d) for m in model.modules())
    _compare(model, (2, 3, 16, 16), train=True)


@pytest.mark.parametrize("train", [False, True], ids=["expectation", "sample"])
def test_stochastic_network_compiles_and_matches_eager(train):
    torch.manual_seed(0)
    model = _fixed_seeds(_gamma(models.create_model("newcbam_seed", reduction=2)))
    assert any(isinstance(m, pnn.StochasticPool2d) for m in model.modules())
    _compare(model, (2, 3, 12, 12), train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_se_network_with_swapped_global_pools_compiles_and_matches_eager(train):
    torch.manual_seed(0)
    model = models.create_model("mobilenet_se", width=0.25, dropout=0.0)
    # every other SE block SoftPool, the rest (and the classifier's pool) stochastic
    soft = pnn.replace_pools(model, "soft", filter=lambda name, m: name.startswith(("features.1.", "features.5.",
                                                                                      "features.7.", "features.9.",
                                                                                      "features.11.")))
    stochastic = pnn.replace_pools(model, "stochastic", seed=SEED)
    assert len(soft) == 5 and len(stochastic) == 5
    _compare(model, (2, 3, 64, 64), train)


class _FreshSeedNet(torch.nn.Module):
    """Every stochastic layer with seed=None: a windowed pool used twice on the same input
    (two draws from one tensor: a compile pass must neither merge nor swap them), a second
    one beside it, a global pool and a pool across channels fed by a pool's output."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.window = pnn.StochasticPool2d(3, 2, 1, ceil_mode=True)
        self.other = pnn.StochasticPool2d(2)
        self.globl = pnn.GlobalStochasticPool(flatten=True)
        self.across = pnn.StochasticPoolReduce(dim=1, keepdim=True)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.window(y), self.window(y), self.other(y), self.globl(y), self.across(self.window(x))


def _train_step(run, model, x, ws):
    """The pools' outputs, the input and parameter gradients of a weighted sum of them, and
    torch's generator state afterwards."""
    x = x.detach().clone().requires_grad_()
    outs = run(x)
    sum((o * w).sum() for o, w in zip(outs, ws)).backward()
    grads = [x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return [o.detach() for o in outs], grads, torch.get_rng_state()


STEPS = 4


def test_sampling_with_a_fresh_seed_per_step_compiles_once_and_matches_eager():
    """seed=None draws a fresh seed at every training forward. Compiled, the draw is an op of
    the graph: one compilation serves every step (no graph break at the draw, no graph
    specialised on a seed's value), and from the same generator state the compiled step
    draws the eager step's seeds, so it makes the same picks and gradients and leaves the
    generator where eager leaves it."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = _FreshSeedNet().train()
    compiled_model = copy.deepcopy(model)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(compiled_model, backend=counter)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 9, 8, generator=gen)
    with torch.no_grad():  # eval mode draws nothing
        ws = [torch.randn(o.shape, generator=gen) for o in copy.deepcopy(model).eval()(x)]
    for step in range(STEPS):
        torch.manual_seed(100 + step)
        want, want_grads, want_rng = _train_step(model, model, x, ws)
        torch.manual_seed(100 + step)
        got, got_grads, got_rng = _train_step(compiled, compiled_model, x, ws)
        for i, (g, w) in enumerate(zip(got, want)):
            assert torch.equal(g, w), f"step {step}: output {i} differs (other picks)"
        assert torch.equal(got_rng, want_rng), f"step {step}: the generator advanced differently"
        for i, (g, w) in enumerate(zip(got_grads, want_grads)):
            _close(g, w, f"step {step}: gradient {i}")
        if step:  # a fresh seed per step really: the picks change between steps
            assert not all(torch.equal(a, b) for a, b in zip(got, previous))
        previous = got
    assert counter.frame_count == 1, f"{counter.frame_count} compilations over {STEPS} steps"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1
