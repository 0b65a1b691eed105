import json

import pytest

from spaces.arch import Arch, ArchError, Stage, kept_channels
from spaces.space import RandomChoices, SpaceConfig, SpaceError, sample_arch
from tests.conftest import tiny_arch


def sample(seed: int, bits=(32, 16, 8)) -> Arch:
    return sample_arch(RandomChoices(seed), SpaceConfig(), in_chans=1, input_size=28,
                       num_classes=10, bits=bits)


def test_json_round_trip_is_exact():
    for seed in range(50):
        arch = sample(seed)
        text = arch.to_json()
        again = Arch.from_json(text)
        assert again == arch
        assert again.to_json() == text
        assert again.arch_id == arch.arch_id


def test_json_records_kept_channels_and_refuses_drift():
    arch = tiny_arch(prune=0.5)
    data = json.loads(arch.to_json())
    assert data["kept_chs"] == [8, 8]
    data["kept_chs"] = [8, 9]
    with pytest.raises(ArchError, match="kept_chs"):
        Arch.from_dict(data)


def test_arch_id_depends_on_content():
    assert tiny_arch().arch_id != tiny_arch(prune=0.25).arch_id
    assert tiny_arch().arch_id == tiny_arch().arch_id


def test_invalid_stage_names_every_problem():
    with pytest.raises(ArchError) as err:
        Stage("xx", 4, 1, 0.0, "gelu", 2, 3, 8, 1.5, (32,))
    msg = str(err.value)
    for part in ("block 'xx'", "kernel 4", "act 'gelu'", "stride 3", "prune_ratio 1.5",
                 "1 bit-widths for 2 blocks"):
        assert part in msg


def test_from_json_rejects_other_versions_and_garbage():
    data = json.loads(tiny_arch().to_json())
    data["version"] = 99
    with pytest.raises(ArchError, match="version 99"):
        Arch.from_dict(data)
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_json("{nope")
    with pytest.raises(ArchError, match="JSON object"):
        Arch.from_json("[1, 2]")


def test_kept_channels_is_exact_and_never_zero():
    assert kept_channels(24, 0.25) == 18
    assert kept_channels(13, 0.5) == 6  # round half to even, as Python rounds
    assert kept_channels(1, 0.9) == 1


def test_sampling_is_reproducible_and_uses_only_device_bits():
    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    for seed in range(20):
        assert set(sample(seed, bits=(32, 8)).bits) <= {32, 8}


def test_stride_only_on_a_stage_first_block():
    """A stage's first block takes the stage's stride; every later block has stride 1 and a
    residual connection (its input and output widths are equal)."""
    later = 0
    for seed in range(20):
        arch = sample(seed)
        for layer in arch.layers():
            if layer.kind not in ("ds", "ir"):
                continue
            stage, block = (int(part[1:]) for part in layer.name.split("."))
            if block == 0:
                assert layer.stride == arch.stages[stage].stride, layer
            else:
                later += 1
                assert layer.stride == 1 and layer.skip and layer.in_chs == layer.out_chs, layer
    assert later > 20  # the space's deeper stages were sampled


def test_bad_space_and_bits_are_reported():
    space = SpaceConfig(kernel=[4], prune_ratio=[1.0])
    with pytest.raises(SpaceError, match="space.kernel has 4"):
        space.validate()
    with pytest.raises(SpaceError, match="bit-widths"):
        sample_arch(RandomChoices(0), SpaceConfig(), in_chans=1, input_size=28,
                    num_classes=10, bits=[3])
