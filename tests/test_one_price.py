"""One price for one network: an architecture, its arch.json and its exported ONNX files are
priced alike on every shipped device; a graph that is no architecture of the space says so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from latency_models.devices import MODEL_DIR, known_devices
from latency_models.model import DeviceModel
from spaces.arch import all_bits
from spaces.build import as_trained, build_model
from spaces.onnx_io import ARCH_KEY, export_fp32, export_int8
from spaces.space import RandomChoices, SpaceConfig, sample_arch

N_ARCHS = 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Sampled architectures (fp32 and mixed int8) exported as a user gets them: a folder with
    arch.json, model.onnx (fp32) and model.int8.onnx."""
    root = tmp_path_factory.mktemp("one-price")
    calib = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    out = []
    torch.manual_seed(0)
    for i in range(N_ARCHS):
        arch = sample_arch(RandomChoices(500 + i), SpaceConfig(), in_chans=1, input_size=28,
                           num_classes=10, bits=[32, 8])
        folder = root / f"trial_{i}"
        folder.mkdir()
        (folder / "arch.json").write_text(arch.to_json())
        export_fp32(as_trained(build_model(arch), i).eval(), arch, folder / "model.onnx")
        export_int8(folder / "model.onnx", arch, folder / "model.int8.onnx", calib)
        out.append((arch, folder))
    return out


@pytest.mark.parametrize("device", known_devices())
def test_arch_and_its_onnx_files_get_one_price(exported, device):
    model = DeviceModel.load(MODEL_DIR / f"{device}.json")
    for arch, folder in exported:
        for priced_arch, file in ((all_bits(arch, 32), "model.onnx"), (arch, "model.int8.onnx")):
            want = model.price(priced_arch)
            got = model.price(folder / file)
            assert got.provenance["path"] == "onnx:arch", (device, file)
            assert got.latency_ms == pytest.approx(want.latency_ms, rel=0.01), (device, file)
            assert got.energy_mj == pytest.approx(want.energy_mj, rel=0.01), (device, file)
        # arch.json is the architecture; the int8 graph without its tag is found by it
        assert model.price(folder / "arch.json").latency_ms == pytest.approx(
            model.price(arch).latency_ms, rel=1e-12)


def test_a_graph_without_its_architecture_is_priced_by_its_ops(exported, tmp_path):
    model = DeviceModel.load(MODEL_DIR / "host.json")
    arch, folder = exported[0]
    graph = onnx.load(str(folder / "model.int8.onnx"))
    kept = [p for p in graph.metadata_props if p.key != ARCH_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    alone = tmp_path / "foreign.onnx"  # no arch.json beside it
    onnx.save(graph, str(alone))
    assert model.price(alone).provenance["path"] == "onnx:ops"
    (tmp_path / "arch.json").write_text(arch.to_json())  # the architecture beside it
    assert model.price(alone).provenance["path"] == "onnx:arch"
    # an architecture that does not match the graph is not used
    other, _ = exported[1]
    (tmp_path / "arch.json").write_text(other.to_json())
    assert model.price(alone).provenance["path"] == "onnx:ops"


def test_price_many_is_price_of_each(exported):
    model = DeviceModel.load(MODEL_DIR / "host.json")
    nets = [a for a, _ in exported] + [f / "model.onnx" for _, f in exported]
    many = model.price_many(nets)
    for net, pred in zip(nets, many):
        assert pred.latency_ms == pytest.approx(model.price(net).latency_ms, rel=1e-12)
