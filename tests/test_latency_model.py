import json

import numpy as np
import pytest

from latency_models.devices import MODEL_DIR
from latency_models.model import DeviceModel, DeviceModelError
from latency_models.ops import Op, arch_ops
from latency_models.sources import MeasurementError, read_fbnet
from tests.conftest import tiny_arch
from tests.test_arch import sample


def synthetic_samples(n=60, seed=0):
    """Networks priced by known per-kind costs: conv 2 ms/MMAC, pw 1 ms/MMAC, 0.01 ms/op."""
    rng = np.random.default_rng(seed)
    samples, ys = [], []
    for _ in range(n):
        ops = [Op("conv", int(rng.integers(1e4, 1e6)), int(rng.integers(1e3, 1e5))),
               Op("pwconv", int(rng.integers(1e4, 1e6)), int(rng.integers(1e3, 1e5))),
               Op("eltwise", 0, int(rng.integers(1e3, 1e5)))]
        y = 2 * ops[0].macs / 1e6 + ops[1].macs / 1e6 + 0.03 + 0.05
        samples.append(ops)
        ys.append(y)
    return samples, ys


def test_fit_recovers_known_costs_and_predicts_unseen():
    samples, ys = synthetic_samples()
    model = DeviceModel("dev", power_w=2.0).fit(samples[:50], ys[:50])
    for ops, y in zip(samples[50:], ys[50:]):
        pred = model.price(ops)
        assert pred.latency_ms == pytest.approx(y, rel=1e-3)
        assert pred.energy_mj == pytest.approx(2.0 * pred.latency_ms)
        assert pred.provenance["latency"] == "regressed"
        assert pred.provenance["energy"] == "modelled"


def test_measured_networks_are_looked_up():
    samples, ys = synthetic_samples()
    model = DeviceModel("dev", power_w=1.0).fit(samples, ys)
    model.add_measurements(samples[:1], [123.0])
    pred = model.price(samples[0])
    assert pred.latency_ms == 123.0 and pred.provenance["latency"] == "measured"


def test_missing_precision_uses_labelled_fallback_or_fails():
    samples, ys = synthetic_samples()
    int8 = [Op(o.kind, o.macs, o.elems, 8) for o in samples[0]]
    model = DeviceModel("dev", power_w=1.0, fallback={"8": 32}).fit(samples, ys)
    pred = model.price(int8)
    assert pred.provenance["latency"] == "modelled" and "8-bit ops priced as 32-bit" in \
        pred.provenance["note"]
    with pytest.raises(DeviceModelError, match="no latency model for 8-bit"):
        DeviceModel("dev", power_w=1.0).fit(samples, ys).price(int8)


def test_extrapolation_is_flagged():
    samples, ys = synthetic_samples()
    model = DeviceModel("dev", power_w=1.0).fit(samples, ys)
    assert not model.price(samples[0]).provenance["extrapolated"]
    huge = samples[0] + [Op("dwconv", 10**9, 10**7)]
    assert model.price(huge).provenance["extrapolated"]


def test_save_load_round_trip_and_tamper_checks(tmp_path):
    samples, ys = synthetic_samples()
    model = DeviceModel("dev", power_w=1.5, fallback={"8": 32}).fit(samples, ys)
    path = tmp_path / "dev.json"
    model.save(path)
    again = DeviceModel.load(path)
    assert again.hash == model.hash
    assert again.price(samples[3]).latency_ms == model.price(samples[3]).latency_ms
    data = json.loads(path.read_text())
    data["power_w"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceModelError, match="edited after fitting"):
        DeviceModel.load(path)
    data["format_version"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceModelError, match="format version 0"):
        DeviceModel.load(path)
    path.write_text("{corrupt")
    with pytest.raises(DeviceModelError, match="not valid JSON"):
        DeviceModel.load(path)
    path.write_text("")
    with pytest.raises(DeviceModelError, match="not valid JSON"):
        DeviceModel.load(path)


@pytest.mark.parametrize("device", ["rpi4", "host", "pixel3", "jetson_tx2", "note10",
                                    "bitfusion"])
def test_shipped_device_models_load_and_price_the_space(device):
    model = DeviceModel.load(MODEL_DIR / f"{device}.json")
    lat = [model.price(arch_ops(sample(s, bits=(32, 8)))).latency_ms for s in range(20)]
    assert all(0 < v < 100 for v in lat)
    small, big = tiny_arch(), sample(17)
    assert model.price(arch_ops(small)).latency_ms < model.price(arch_ops(big)).latency_ms


def test_fbnet_table_reads_and_rejects_bad_files(tmp_path):
    samples, ys, keys, _ = read_fbnet(MODEL_DIR / "hwnasbench_fbnet_blocks.csv",
                                      "raspi4_latency")
    assert len(samples) == len(ys) > 100 and all(y > 0 for y in ys)
    bad = tmp_path / "bad.csv"
    bad.write_text("key,op,H\nx,ConvBlock,8\n")
    with pytest.raises(MeasurementError, match="lacks the columns"):
        read_fbnet(bad, "raspi4_latency")
    lines = (MODEL_DIR / "hwnasbench_fbnet_blocks.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("raspi4_latency")] = "-1"
    bad.write_text("\n".join([lines[0], ",".join(row)]))
    with pytest.raises(MeasurementError, match="not a positive number"):
        read_fbnet(bad, "raspi4_latency")


def test_bitfusion_runs_4_and_6_bits_natively_and_says_simulated():
    from spaces.arch import all_bits

    model = DeviceModel.load(MODEL_DIR / "bitfusion.json")
    arch = sample(5, bits=(8,))
    p8, p6, p4 = (model.price(all_bits(arch, b)) for b in (8, 6, 4))
    assert p4.latency_ms < p6.latency_ms < p8.latency_ms
    assert p4.energy_mj < p8.energy_mj
    assert p8.provenance["latency"] == "simulated" and p8.provenance["energy"] == "simulated"
    # a float layer has no BitFusion price: it is priced as 8-bit and says so
    mixed = model.price(all_bits(arch, 32))
    assert mixed.provenance["latency"] == "modelled" and "32-bit ops priced as 8-bit" in \
        mixed.provenance["note"]


def test_int8_is_priced_per_op_not_as_a_fixed_speed_up():
    from spaces.arch import all_bits

    model = DeviceModel.load(MODEL_DIR / "host.json")
    ratios = {round(model.price(arch).latency_ms
                    / model.price(all_bits(arch, 32)).latency_ms, 3)
              for arch in (all_bits(sample(s), 8) for s in range(6))}
    assert len(ratios) > 3  # each network gets its own int8/fp32 ratio from its ops


def test_a_device_model_of_an_earlier_shape_is_refused_with_how_to_refit(tmp_path):
    import json

    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel, DeviceModelError

    data = json.loads((MODEL_DIR / "host.json").read_text())
    for edit in ({"layer_linear": None}, {"compose": data["compose"][:4]}):
        old = {k: v for k, v in data.items() if k != "hash"}
        old.update(edit)
        old = {k: v for k, v in old.items() if v is not None}
        (tmp_path / "old.json").write_text(json.dumps(old))
        with pytest.raises(DeviceModelError, match="earlier edgenas.*latency_models.fit"):
            DeviceModel.load(tmp_path / "old.json")
