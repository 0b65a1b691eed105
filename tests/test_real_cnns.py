"""Real CNNs priced on phone cores (issue 27): grouped convolutions, fully 8-bit pricing,
graphs that cannot be priced, the measured-CNN source and int8 transferred to fp32-only
devices."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from latency_models.devices import MODEL_DIR
from latency_models.model import DeviceModel, DeviceModelError
from latency_models.ops import Op, UnknownOpError, arch_ops, onnx_ops
from latency_models.sources import MeasurementError, read_cnn
from spaces.arch import all_bits
from tests.conftest import tiny_arch
from tests.test_first_hour import run_here

DATA = MODEL_DIR / "mobile_cnn" / "tflite_cnn_e2e.csv"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx


class Tiny(nn.Module):
    """A dense conv + ReLU, a grouped 3x3 (ResNeXt-like) and a concatenation."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.cat([y, self.g(y)], 1).mean((2, 3))


def export(model, path, dynamic=None, inputs=1):
    xs = tuple(torch.zeros(1, 3, 16, 16) for _ in range(inputs))
    torch.onnx.export(model, xs, str(path), dynamo=False, opset_version=17,
                      dynamic_axes=dynamic, input_names=[f"x{i}" for i in range(inputs)])
    return onnx.load(str(path))


def test_grouped_convolutions_are_their_own_kind_and_int8_folds_relus(tmp_path):
    ops = onnx_ops(export(Tiny().eval(), tmp_path / "t.onnx"))
    grouped = [op for op in ops if op.kind == "gconv"]
    assert len(grouped) == 1 and grouped[0].groups == 4
    assert grouped[0].weights == 16 * 4 * 9  # cin / groups x cout x k x k
    assert grouped[0].macs == 16 * 16 * 16 * 4 * 9
    assert sum(op.kind == "eltwise" for op in ops) == 2  # the ReLU and the concatenation
    low = onnx_ops(onnx.load(str(tmp_path / "t.onnx")), precision=8)
    assert {op.bits for op in low if op.kind in ("conv", "gconv")} == {8}
    assert sum(op.kind == "eltwise" for op in low) == 1  # the ReLU folded into its conv


def test_graphs_that_cannot_be_priced_say_why(tmp_path):
    dyn = export(Tiny().eval(), tmp_path / "d.onnx", dynamic={"x0": {2: "h", 3: "w"}})
    with pytest.raises(UnknownOpError, match="dynamic size other than the batch"):
        onnx_ops(dyn)

    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(UnknownOpError, match="2 inputs"):
        onnx_ops(export(Two(), tmp_path / "two.onnx", inputs=2))
    device = DeviceModel.load(MODEL_DIR / "pixel4.json")
    with pytest.raises(DeviceModelError, match="d.onnx: input 'x0'"):
        device.price(tmp_path / "d.onnx")


def test_predict_goes_on_past_a_file_it_cannot_price(tmp_path):
    export(Tiny().eval(), tmp_path / "good.onnx")
    graph = export(Tiny().eval(), tmp_path / "bad.onnx")
    next(n for n in graph.graph.node if n.op_type == "Relu").op_type = "Celu"
    onnx.save(graph, str(tmp_path / "bad.onnx"))
    out = run_here("-m", "latency_models.predict", "+device=pixel4", f"model={tmp_path}",
                   "precision=int8", "format=jsonl")
    assert out.returncode == 1, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["path"].endswith("good.onnx") for r in rows] == [True]
    assert rows[0]["precision"] == "int8" and rows[0]["provenance"]["latency"] == "regressed"
    assert "bad.onnx: op type 'Celu'" in out.stderr and "1 of 2 files" in out.stderr


def test_measured_cnns_fit_pixel4_and_bad_measurement_files_are_named(tmp_path):
    samples, ys, groups = read_cnn(DATA, "pixel4|1large")
    assert len(samples) == 140 and len(set(groups)) == 70 and min(ys) > 0
    resnet = groups.index("resnet12")  # fp32 row first, int8 second
    assert ys[resnet] / ys[resnet + 1] > 3  # dense convolutions: int8 pays off most
    device = DeviceModel.load(MODEL_DIR / "pixel4.json")
    pred = device.price(samples[resnet + 1])
    assert pred.provenance["latency"] == "measured"  # a network measured whole
    assert abs(pred.latency_ms - ys[resnet + 1]) < 1e-6
    with pytest.raises(MeasurementError, match="its cores: .*pixel4\\|1small"):
        read_cnn(DATA, "pixel9|1large")
    text = DATA.read_text().splitlines()
    col = text[0].split(",").index("pixel4|1large|float|mean")
    row = text[1].split(",")
    row[col] = "-3"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([text[0], ",".join(row)]) + "\n")
    with pytest.raises(MeasurementError, match="bad.csv row 2: pixel4\\|1large\\|float\\|mean"):
        read_cnn(bad, "pixel4|1large", DATA.with_name("ops.csv.gz"))


def test_rpi4_prices_8bit_layers_by_transferred_ratios():
    device = DeviceModel.load(MODEL_DIR / "rpi4.json")
    arch = tiny_arch()
    fp32, int8 = device.price(all_bits(arch, 32)), device.price(all_bits(arch, 8))
    assert fp32.provenance["latency"] == "regressed" and "note" not in fp32.provenance
    assert int8.provenance["latency"] == "transferred"
    assert "learned on Arm cores" in int8.provenance["note"]
    assert int8.latency_ms < fp32.latency_ms
    assert device.ops.coef_["32"] != device.ops.coef_["8"]


def test_a_model_file_from_before_grouped_convolutions_still_loads(tmp_path):
    model = DeviceModel(device="old", power_w=1.0).fit(
        [arch_ops(tiny_arch(prune=p)) for p in (0.0, 0.25, 0.5)], [1.0, 0.8, 0.6])
    data = model.to_dict()
    n = len(data["features"]) - 5  # the layout without the gconv block
    old = dict(data, kinds=data["kinds"][:-1], features=data["features"][:n],
               coef={b: v[:n] for b, v in data["coef"].items()})
    text = json.dumps(old, sort_keys=True)  # how a model's hash is taken
    old["hash"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = DeviceModel.load(tmp_path / "old.json")
    coef = np.asarray(loaded.ops.coef_["32"])
    assert np.array_equal(coef[n:], coef[:5])  # grouped priced as dense convolutions
    grouped = loaded.price([Op("gconv", 1000, 100, 32, 16, 16, 3, 1, 8, 4)])
    assert grouped.provenance["extrapolated"]  # never measured: flagged
    old["coef"]["32"][0] += 1.0  # edited after fitting
    (tmp_path / "edited.json").write_text(json.dumps(old))
    with pytest.raises(DeviceModelError, match="edited after fitting"):
        DeviceModel.load(tmp_path / "edited.json")


def test_runtime_shapes_are_measured_and_a_graph_without_inputs_is_priced(tmp_path):
    class SamePad(nn.Module):
        """A "same" padding computed from the input's size at run time (pytorchcv's)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2)

        def forward(self, x):
            h = x.shape[2]
            pad = h % 3 + 1  # 2 at 16 px: 18 px padded, 8x8 outputs
            return self.conv(nn.functional.pad(x, [0, pad, 0, pad]))

    model = SamePad().eval()
    path = tmp_path / "same.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                      opset_version=17, dynamic_axes={"x": {0: "batch"}}, input_names=["x"])
    conv = next(op for op in onnx_ops(onnx.load(str(path))) if op.kind == "conv")
    assert conv.macs == 8 * 8 * 8 * 3 * 9  # 8x8 outputs, not the 1x1 of unresolved shapes

    class Constant(nn.Module):  # its output does not depend on its input: no graph input
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(torch.zeros(1, 3, 8, 8))

    torch.onnx.export(Constant().eval(), (torch.zeros(1, 3, 8, 8),), str(tmp_path / "c.onnx"),
                      dynamo=False, opset_version=17, do_constant_folding=False)
    assert [op.kind for op in onnx_ops(onnx.load(str(tmp_path / "c.onnx")))] == ["conv"]
