import numpy as np
import pytest

from latency_models import fast
from latency_models.devices import MODEL_DIR
from latency_models.estimators import Lookup
from latency_models.model import DeviceModel
from latency_models.ops import arch_ops
from spaces.space import RandomChoices, SpaceConfig, sample_arch
from tests.conftest import tiny_arch


def archs(n, seed=0, **space):
    cfg = SpaceConfig(**space)
    return [sample_arch(RandomChoices(seed * 1000 + i), cfg, in_chans=1, input_size=28,
                        num_classes=10, bits=[32, 16, 8]) for i in range(n)]


@pytest.mark.parametrize("device", ["rpi4", "host", "jetson_tx2", "bitfusion", "pixel4", "pixel3"])
def test_vectorized_prices_equal_the_reference_path(device):
    model = DeviceModel.load(MODEL_DIR / f"{device}.json")
    # the vectorized path is the regressor: compare like with like
    model.lookup, model.layers, model.composition, model.correction = Lookup(), None, None, None
    assert fast.exact_for(model)
    batch = archs(150) + [tiny_arch(), tiny_arch(bits=8), tiny_arch(resolution=32, prune=0.5)]
    got = model.price_many(batch)  # vectorized: more than a handful of architectures
    ref = [model.price(arch_ops(a)) for a in batch]  # op by op
    assert np.allclose([p.latency_ms for p in got], [p.latency_ms for p in ref], rtol=1e-9)
    assert np.allclose([p.energy_mj for p in got], [p.energy_mj for p in ref], rtol=1e-9)
    for g, r in zip(got, ref):  # each architecture its own provenance
        assert {k: v for k, v in g.provenance.items() if k != "path"} == {
            k: v for k, v in r.provenance.items() if k != "path"}


def test_vectorized_prices_an_empty_batch():
    model = DeviceModel.load(MODEL_DIR / "rpi4.json")
    assert len(model.price_many([])) == 0
    assert len(fast.predict_archs(model, [])["latency_ms"]) == 0


@pytest.mark.parametrize("device", ["host", "rpi4"])
def test_many_at_once_is_each_alone(device):
    """A batch (vectorized where exact, layer by layer otherwise) prices each architecture
    as it is priced alone."""
    model = DeviceModel.load(MODEL_DIR / f"{device}.json")
    batch = archs(40)
    many = model.price_many(batch)
    assert [p.latency_ms for p in many] == pytest.approx(
        [model.price(a).latency_ms for a in batch], rel=1e-12)
    assert [p.provenance for p in many] == [model.price(a).provenance for a in batch]
