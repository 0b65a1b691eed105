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
    arch = tiny_arch(bits=8)
    model = attach_fake_quant(build_model(arch), arch)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    conv = model.net.conv_stem
    assert isinstance(conv, nn.Conv2d)
    assert conv.parametrizations.weight.original.grad is not None
