import numpy as np
import pytest

from latency_models.model import DeviceModel
from latency_models.ops import arch_ops
from search.config import MODEL_DIR
from spaces.space import RandomChoices, SpaceConfig, sample_arch
from tests.conftest import tiny_arch


def archs(n, seed=0, **space):
    cfg = SpaceConfig(**space)
    return [sample_arch(RandomChoices(seed * 1000 + i), cfg, in_chans=1, input_size=28,
                        num_classes=10, bits=[32, 16, 8]) for i in range(n)]


@pytest.mark.parametrize("device", ["rpi4", "host", "jetson_tx2", "bitfusion"])
def test_vectorized_prices_equal_the_reference_path(device):
    model = DeviceModel.load(MODEL_DIR / f"{device}.json")
    model.lookup_ = {}  # the fast path is the regressor; compare like with like
    model.layer_model_, model.compose_ = "", []
    batch = archs(150) + [tiny_arch(), tiny_arch(bits=8), tiny_arch(resolution=32, prune=0.5)]
    fast = model.predict_archs(batch)
    ref = [model.predict(arch_ops(a)) for a in batch]
    assert np.allclose(fast["latency_ms"], [p.latency_ms for p in ref], rtol=1e-9)
    assert np.allclose(fast["energy_mj"], [p.energy_mj for p in ref], rtol=1e-9)
    assert list(fast["extrapolated"]) == [p.provenance["extrapolated"] for p in ref]
    assert fast["provenance"]["latency"] in {p.provenance["latency"] for p in ref}
    assert fast["provenance"]["energy"] == ref[0].provenance["energy"]


def test_vectorized_prices_an_empty_batch():
    model = DeviceModel.load(MODEL_DIR / "rpi4.json")
    assert len(model.predict_archs([])["latency_ms"]) == 0


def test_devices_with_a_layer_model_are_priced_as_the_search_prices_them():
    model = DeviceModel.load(MODEL_DIR / "host.json")
    assert model.layer_model_
    batch = archs(5)
    fast = model.predict_archs(batch)
    assert np.allclose(fast["latency_ms"], [model.predict_arch(a).latency_ms for a in batch])
