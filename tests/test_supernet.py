"""The weight-sharing supernet: every architecture of the space as a slice of one set of
weights, run by the architecture's own modules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spaces.arch import Arch
from spaces.build import build_model
from spaces.space import RandomChoices, SpaceConfig, sample_arch
from spaces.supernet import SuperNet, SuperNetError, largest_arch, slice_like

SHAPE = dict(in_chans=1, input_size=28, num_classes=10)


def sample(seed: int, bits=(32, 8)) -> Arch:
    return sample_arch(RandomChoices(seed), SpaceConfig(), bits=list(bits), **SHAPE)


@pytest.fixture(scope="module")
def supernet() -> SuperNet:
    torch.manual_seed(0)
    net = SuperNet(SpaceConfig(), **SHAPE)
    # trained-looking batch-norm statistics, so that slicing them is tested too
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_slices_are_first_channels_and_kernel_centres():
    w = torch.arange(4 * 3 * 7 * 7, dtype=torch.float32).view(4, 3, 7, 7)
    part = slice_like(w, torch.Size([2, 3, 3, 3]))
    assert torch.equal(part, w[:2, :, 2:5, 2:5])
    assert part.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()  # a view
    with pytest.raises(SuperNetError):
        slice_like(w, torch.Size([5, 3, 7, 7]))


def test_the_largest_architecture_is_the_supernet_itself(supernet):
    big = largest_arch(SpaceConfig(), "ir", **SHAPE)
    with torch.no_grad():
        assert torch.allclose(supernet.run(big, images()), supernet.ir(images()), atol=1e-6)


def test_a_sub_network_is_its_architectures_own_model_with_sliced_weights(supernet):
    for seed in range(6):
        arch = sample(seed, bits=(32,))
        model = supernet.extract(arch)
        assert type(model) is type(build_model(arch))
        with torch.no_grad():
            ref = model.eval()(images())
            got = supernet.run(arch, images())
        assert ref.shape == (4, 10)
        assert torch.allclose(got, ref, atol=1e-5), (seed, (got - ref).abs().max())


def test_the_dense_widths_of_an_architecture_start_the_exports_training(supernet):
    from search.proxy import train_candidate
    from search.train import Recipe

    arch = next(a for a in (sample(s, bits=(32,)) for s in range(40)) if a.is_pruned)
    dense = supernet.extract(arch, pruned=False)
    assert type(dense) is type(build_model(arch, pruned=False))
    state = dense.state_dict()
    for name, t in state.items():  # each tensor is the supernet's slice of its shape
        assert torch.equal(t, slice_like(supernet._source(name, arch), t.shape)), name
    assert sum(t.numel() for t in state.values()) > sum(
        t.numel() for t in supernet.extract(arch).state_dict().values())
    unpruned = dataclasses.replace(arch, stages=[dataclasses.replace(st, prune_ratio=0.0)
                                                 for st in arch.stages])
    assert all(torch.equal(a, b) for a, b in zip(
        supernet.extract(unpruned, pruned=False).state_dict().values(),
        supernet.extract(unpruned).state_dict().values()))
    # train_candidate's dense phase starts from those weights: with a zero learning rate they
    # are what it prunes (the first step's model), and without start= it is another model
    x = (images(8) * 255).to(torch.uint8)
    y = torch.arange(8) % 10
    frozen = Recipe(epochs=1, batch=8, lr=0.0, weight_decay=0.0)
    got = train_candidate(unpruned, x, y, None, frozen,
                          start=supernet.extract(unpruned, pruned=False).state_dict())
    fresh = train_candidate(unpruned, x, y, None, frozen)
    ref = supernet.extract(unpruned, pruned=False)
    for (name, t), r in zip(got.named_parameters(), ref.parameters()):
        assert torch.equal(t, r), name
    assert not all(torch.equal(r, f) for r, f in zip(ref.parameters(), fresh.parameters()))


def test_training_a_sub_network_trains_only_the_shared_weights_it_uses(supernet):
    arch = sample(3, bits=(32,))
    supernet.zero_grad(set_to_none=True)
    supernet.train()
    try:
        loss = supernet.run(arch, images(8)).logsumexp(1).mean()
        loss.backward()
    finally:
        supernet.eval()
    stem = supernet.ir.net.conv_stem.weight.grad
    assert stem is not None and stem[:arch.stem_chs].abs().sum() > 0
    assert stem[arch.stem_chs:].abs().sum() == 0  # channels the sub-network does not have
    head = supernet.ir.net.conv_head.weight.grad
    assert head[arch.head_chs:].abs().sum() == 0 and head[:arch.head_chs].abs().sum() > 0
    # batch-norm statistics are never written by a sub-network
    before = supernet.ir.net.bn1.running_mean.clone()
    supernet.train()
    with torch.no_grad():
        supernet.run(arch, images(8))
    supernet.eval()
    assert torch.equal(before, supernet.ir.net.bn1.running_mean)
    supernet.zero_grad(set_to_none=True)


def test_bit_widths_fake_quantize_the_sliced_weights(supernet):
    arch = sample(5, bits=(8,))
    with torch.no_grad():
        fp = supernet.run(arch, images(), quantize=False)
        q8 = supernet.run(arch, images())
        q4 = supernet.run(dataclasses.replace(arch, stem_bits=4), images())
    assert not torch.equal(fp, q8) and torch.allclose(fp, q8, atol=0.1 * fp.abs().max())
    assert not torch.equal(q8, q4)


def test_recalibration_measures_a_sub_networks_own_statistics(supernet):
    arch = sample(7, bits=(32,))
    batches = [images(16, seed=i) for i in range(3)]
    weights = supernet.recalibrate(arch, batches)
    mean = weights["net.bn1.running_mean"]
    with torch.no_grad():
        model = supernet.extract(arch).train()
        model.net.bn1.momentum = None
        for x in batches:
            model(x)
    assert torch.allclose(mean, model.net.bn1.running_mean, atol=1e-5)
    assert not torch.allclose(mean, supernet.ir.net.bn1.running_mean[:arch.stem_chs])
    with torch.no_grad():
        assert supernet.run(arch, images(), weights).shape == (4, 10)


def test_sorting_channels_keeps_the_function_and_puts_important_channels_first(supernet):
    net = SuperNet(SpaceConfig(), **SHAPE)
    net.load_state_dict(supernet.state_dict())
    net.eval()
    big = largest_arch(SpaceConfig(), "ir", **SHAPE)
    with torch.no_grad():
        before = net.run(big, images())
        net.sort_channels()
        after = net.run(big, images())
    assert torch.allclose(before, after, atol=1e-5)
    for stage in net.ir.net.blocks:
        for block in stage:
            l1 = block.conv_pw.weight.abs().flatten(1).sum(1)
            assert torch.all(l1[:-1] >= l1[1:])


def test_an_architecture_of_another_space_or_dataset_is_refused(supernet):
    arch = sample(1)
    with pytest.raises(SuperNetError, match="num_classes 5"):
        supernet.run(dataclasses.replace(arch, num_classes=5), images())
    with pytest.raises(SuperNetError, match="stages"):
        supernet.run(dataclasses.replace(arch, stages=arch.stages[:2]), images())


def test_progressive_shrinking_opens_one_group_of_dimensions_at_a_time():
    from search.supernet import elastic_dimensions
    from spaces.supernet import SHRINK_PHASES, shrinking_arch

    opened = [elastic_dimensions(e, 8) for e in range(8)]
    assert opened[0] == ["kernel"] and opened[-1] == [d for p in SHRINK_PHASES for d in p]
    assert all(set(a) <= set(b) for a, b in zip(opened, opened[1:]))  # never closes again
    space = SpaceConfig()
    shape = dict(in_chans=1, input_size=28, num_classes=10)
    largest = largest_arch(space, "ir", **shape)
    archs = [shrinking_arch(RandomChoices(i), space, ["kernel"], bits=[32, 8], **shape)
             for i in range(20)]
    assert {s.kernel for a in archs for s in a.stages} == set(space.kernel)
    for a in archs:  # everything but the kernels at the largest
        assert a == dataclasses.replace(largest, stages=tuple(
            dataclasses.replace(s, kernel=k.kernel) for s, k in zip(largest.stages, a.stages)))
    deep = [shrinking_arch(RandomChoices(i), space, ["kernel", "depth"], bits=[32, 8], **shape)
            for i in range(20)]
    assert {s.depth for a in deep for s in a.stages} == {1, 2, 3}
    assert all(b == 32 for a in deep for s in a.stages for b in s.bits)
    with pytest.raises(SuperNetError, match="unknown dimensions"):
        shrinking_arch(RandomChoices(0), space, ["kernal"], bits=[32], **shape)
