"""Example networks of poolexport.models: registry, shapes, determinism, gradients, export."""
import numpy as np
import pytest
import torch

import poolexport.models as M
import poolexport.nn as pnn

ALL = ["cbam_seed", "cbam_stochastic_l2", "eca", "mobilenet_se", "newcbam", "newcbam_seed", "resnet_softpool",
       "se_effnet"]
SHAPES = {"mobilenet_se": (1, 3, 64, 64)}
SOFTMAX = ("cbam_stochastic_l2", "cbam_seed")


def _set_gamma(model, value):
    for mod in model.modules():
        if isinstance(mod, (M.NewCBAM, M.NewCBAMSeed)):
            torch.nn.init.constant_(mod.gamma, value)


def test_registry():
    assert M.list_models() == sorted(ALL)
    for name in ALL:
        assert M.default_input_shape(name) == SHAPES.get(name, (1, 3, 32, 32))
    with pytest.raises(ValueError, match="create_model: arch must be one of"):
        M.create_model("resnet50")
    with pytest.raises(ValueError, match="default_input_shape: arch"):
        M.default_input_shape("nope")


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_eval_determinism(name):
    model = M.create_model(name, num_classes=7).eval()
    x = torch.rand(2, *M.default_input_shape(name)[1:])
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert a.shape == (2, 7) and torch.isfinite(a).all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["newcbam", "cbam_stochastic_l2", "newcbam_seed", "cbam_seed"])
def test_train_mode_stochastic_pooling_depends_on_the_seed(name):
    model = M.create_model(name).train()
    _set_gamma(model, 0.5)  # at gamma = 0 NewCBAM is the identity and hides its pools
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    torch.manual_seed(1)
    c = model(x)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


@pytest.mark.parametrize("name", ALL)
def test_gradients_flow(name):
    # newcbam_seed's MLP has C // 16 hidden units: one at the default width's small C,
    # whose ReLU is dead on a whole batch about half the time; C // 2 keeps the check meaningful
    model = M.create_model(name, **({"reduction": 2} if name == "newcbam_seed" else {})).train()
    _set_gamma(model, 0.5)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = model(x)
    loss = torch.nn.functional.nll_loss(out.clamp_min(1e-9).log(), torch.tensor([1, 2])) if name in SOFTMAX \
        else torch.nn.functional.cross_entropy(out, torch.tensor([1, 2]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero >= 0.9 * len(list(model.parameters()))


def test_newcbam_block_starts_as_identity_and_learns_gamma():
    block = M.NewCBAM(8)
    x = torch.rand(2, 8, 6, 6)
    torch.testing.assert_close(block(x), x)
    block(x).sum().backward()
    assert block.gamma.grad.abs() > 0
    # its pools are the DOMAIN's: L2 + avg + max descriptors, stochastic + L2 across channels
    kinds = [type(p).__name__ for p in block.channel.pools] + [type(p).__name__ for p in block.spatial.pools]
    assert kinds == ["GlobalLpPool", "GlobalAvgPool", "GlobalMaxPool", "StochasticPoolReduce", "LpPoolReduce"]


def test_cbam_stochastic_l2_outputs_probabilities():
    model = M.create_model("cbam_stochastic_l2").eval()
    with torch.no_grad():
        p = model(torch.rand(3, 3, 32, 32))
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    assert M.create_model("cbam_stochastic_l2", softmax=False).softmax is False


def test_width_scales_channels_and_paper_config_builds():
    small = M.create_model("newcbam")
    convs = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs == [4, 8, 16, 32, 64]
    full = M.create_model("newcbam", width=1.0)
    convs = [m.out_channels for m in full.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs == [64, 128, 256, 512, 1024]
    with pytest.raises(ValueError, match="width"):
        M.create_model("eca", width=0)


def test_models_use_the_requested_attention():
    assert any(isinstance(m, pnn.SE) for m in M.create_model("se_effnet").modules())
    assert any(isinstance(m, pnn.ECA) for m in M.create_model("eca").modules())
    r = M.create_model("resnet_softpool")
    assert any(isinstance(m, pnn.CBAM) for m in r.modules())
    assert any(isinstance(m, pnn.SoftPool2d) for m in r.modules())
    se = next(m for m in M.create_model("se_effnet").modules() if isinstance(m, pnn.SE))
    assert isinstance(se.act, torch.nn.SiLU)


def test_mobilenet_se_is_mobilenet_v3_small_and_its_ten_global_pools_swap():
    # torchvision's mobilenet_v3_small(num_classes=1000) has 2,542,856 parameters
    assert sum(p.numel() for p in M.create_model("mobilenet_se", num_classes=1000).parameters()) == 2_542_856
    stock = M.create_model("mobilenet_se").eval()
    assert sum(isinstance(m, pnn.SE) for m in stock.modules()) == 9
    soft = M.create_model("mobilenet_se", pool="soft").eval()
    soft.load_state_dict(stock.state_dict())
    replaced = pnn.replace_pools(stock, "soft")
    assert len(replaced) == 10 and replaced[-1] == "avgpool"
    assert all(isinstance(stock.get_submodule(n), pnn.GlobalSoftPool) for n in replaced)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(stock(x), soft(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="gives 2C channels"):
        M.create_model("mobilenet_se", pool="catavgmax")


def test_newcbam_exports_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from poolexport.onnx import export_model

    model = M.create_model("newcbam").eval()
    _set_gamma(model, 0.5)
    x = torch.rand(1, 3, 32, 32)
    proto = export_model(model, x, target="portable", dynamic=())
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
