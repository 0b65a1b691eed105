import torch

from spaces.build import arch_def, build_model, built_channels
from tests.conftest import tiny_arch
from tests.test_arch import sample


def test_every_sampled_architecture_builds_and_runs_with_exact_channels():
    x = torch.rand(2, 1, 28, 28)
    for seed in range(12):
        arch = sample(seed)
        for pruned in (False, True):
            model = build_model(arch, pruned).eval()
            expected = [(layer.in_chs, layer.mid_chs, layer.out_chs, layer.rd_chs)
                        for layer in arch.layers(pruned) if layer.kind in ("ds", "ir")]
            assert built_channels(model) == expected
            assert sum(p.numel() for p in model.parameters()) == arch.params(pruned)
            assert model(x).shape == (2, 10)


def test_squeeze_excitation_width_follows_timm_builder_rule():
    # EfficientNet builder (se_from_exp=False): SE width from the block *input* channels.
    arch = tiny_arch(se=0.25)
    layers = {layer.name: layer for layer in arch.layers()}
    assert layers["s0.b0"].rd_chs == 2   # ds: round(8 * 0.25)
    assert layers["s1.b0"].rd_chs == 2   # ir: in 8, mid 24 -> round(8 * 0.25)
    assert layers["s1.b1"].rd_chs == 4   # ir: in 16, mid 48 -> round(16 * 0.25)
    model = build_model(arch)
    assert [c[3] for c in built_channels(model)] == [2, 2, 4]


def test_pruned_expanded_widths_are_not_rounded():
    arch = tiny_arch(prune=0.25)
    mids = [layer.mid_chs for layer in arch.layers() if layer.kind == "ir"]
    assert mids == [18, 27]  # 24 and 36 after removing 25%: not multiples of 8
    assert [c[1] for c in built_channels(build_model(arch))][1:] == mids


def test_arch_def_is_timm_block_strings_with_first_block_noskip():
    d = arch_def(tiny_arch())
    assert d[0] == ["ds_r1_k3_s1_c8_se0.25_nre_noskip"]
    assert d[1][0].startswith("ir_r1_k5_s2_e3.0_c16") and d[1][0].endswith("noskip")
    assert "noskip" not in d[1][1]


def test_resize_inside_the_graph():
    arch = tiny_arch(resolution=32)
    model = build_model(arch).eval()
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 4)
    assert arch.layers()[0].in_size == 32
