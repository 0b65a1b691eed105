import torch
from torch import nn

from spaces.build import build_model
from spaces.prune import prune_model
from spaces.quant import attach_fake_quant, detach_fake_quant
from tests.conftest import tiny_arch
from tests.test_arch import sample


def test_pruning_keeps_the_planned_parameter_count():
    for seed in range(10):
        arch = sample(seed)
        pruned = prune_model(build_model(arch, pruned=False), arch)
        n = sum(p.numel() for p in pruned.parameters())
        assert abs(n - arch.params(pruned=True)) <= 0.01 * arch.params(pruned=True)
        if arch.is_pruned:
            assert n < arch.params(pruned=False)


def test_pruning_with_zero_ratios_is_the_identity():
    arch = tiny_arch()
    dense = build_model(arch, pruned=False).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(dense(x), prune_model(dense, arch).eval()(x))


def test_pruning_removes_the_lowest_l1_channels():
    torch.manual_seed(0)
    arch = tiny_arch(prune=0.5)
    dense = build_model(arch, pruned=False)
    block = dense.net.blocks[1][0]
    with torch.no_grad():
        block.conv_pw.weight.mul_(0.01)
        block.conv_pw.weight[[1, 5, 7]] *= 1000.0  # make these the most important
    pruned = prune_model(dense, arch)
    kept = pruned.net.blocks[1][0].conv_pw.weight
    big = block.conv_pw.weight[[1, 5, 7]]
    for row in big:
        assert any(torch.equal(row, k) for k in kept)


def test_fake_quantization_changes_outputs_and_detaches_cleanly():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    ref = build_model(tiny_arch(bits=32)).eval()
    state = ref.state_dict()
    errors = {}
    for bits in (16, 8, 4):
        arch = tiny_arch(bits=bits)
        model = build_model(arch)
        model.load_state_dict(state)
        attach_fake_quant(model, arch).eval()  # ranges observed on the first batch
        with torch.no_grad():
            errors[bits] = float((model(x) - ref(x)).abs().max())
        detach_fake_quant(model)
        assert set(model.state_dict()) == set(state)
        assert not any(hasattr(m, "act_fake_quant") for m in model.modules())
    assert 0 < errors[16] < errors[8] < errors[4]


def test_fake_quant_passes_gradients():
    """The straight-through estimator: rounding has a zero gradient almost everywhere, so
    without it the weights and the inputs of a fake-quantized layer would learn nothing."""
    from spaces.quant import ActFakeQuant, WeightFakeQuant

    for quant in (WeightFakeQuant(8), WeightFakeQuant(4), ActFakeQuant(8)):
        x = torch.randn(6, 5, 3, 3, requires_grad=True)
        out = quant(x)
        assert not torch.equal(out, x)  # it does quantize
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        assert torch.equal(x.grad, torch.arange(x.numel(), dtype=x.dtype).view_as(x))
    arch = tiny_arch(bits=8)
    model = attach_fake_quant(build_model(arch), arch)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    conv = model.net.conv_stem
    assert isinstance(conv, nn.Conv2d)
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0


class DeadChannelNet(nn.Module):
    """conv -> BN -> ReLU whose channel 1 never fires, then a depthwise conv -> BN that sees a
    constant 0 on that channel (as training leaves it: running variance ~ 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.dw, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.bn1.bias[1] = -100.0  # ReLU kills channel 1
            self.bn2.weight[1], self.bn2.bias[1] = 3.0, 0.5
            self.bn2.running_var[1] = 1e-20
            self.bn2.running_mean[1] = 0.0

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        return self.fc(y.mean((2, 3)))


def test_dead_channels_are_rewritten_as_the_constant_they_output(tmp_path):
    import onnx
    from onnx import numpy_helper

    from spaces.onnx_io import export_module
    from spaces.quant import clean_dead_channels

    torch.manual_seed(0)
    model = DeadChannelNet().eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        before = model(x)

    def largest_folded_weight(path):
        graph = onnx.load(str(path)).graph
        return max(float(abs(numpy_helper.to_array(t)).max()) for t in graph.initializer
                   if len(t.dims) == 4)

    export_module(model, (1, 28, 28), tmp_path / "before.onnx", doc="t")
    assert largest_folded_weight(tmp_path / "before.onnx") > 100  # 3 / sqrt(eps) x filter
    assert clean_dead_channels(model, x[:1]) == 1
    assert torch.count_nonzero(model.dw.weight[1]) == 0 and model.bn2.running_var[1] == 1
    assert torch.count_nonzero(model.dw.weight[[0, 2, 3]]) == 27  # the others untouched
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    export_module(model, (1, 28, 28), tmp_path / "after.onnx", doc="t")
    assert largest_folded_weight(tmp_path / "after.onnx") < 10


def test_dead_channel_cleaning_finds_the_pairs_inside_timm_models():
    from spaces.quant import clean_dead_channels

    model = build_model(tiny_arch()).eval()
    x = torch.rand(1, 1, 28, 28)
    assert clean_dead_channels(model, x) == 0  # nothing dead in a fresh model
    bn = model.net.bn1  # the stem's norm (timm's BatchNormAct2d)
    bn.running_var[0] = 1e-20
    assert clean_dead_channels(model, x) == 1
    assert torch.count_nonzero(model.net.conv_stem.weight[0]) == 0
