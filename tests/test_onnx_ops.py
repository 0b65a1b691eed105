import numpy as np
import onnx
import pytest
import torch

from latency_models.ops import UnknownOpError, arch_ops, onnx_ops, signature
from spaces.arch import all_bits
from spaces.build import build_model
from spaces.onnx_io import export_fp32, export_int8, int8_nodes, ort_session
from tests.conftest import tiny_arch
from tests.test_arch import sample


@pytest.mark.parametrize("resolution", [28, 32])
def test_onnx_fp32_matches_torch(tmp_path, resolution):
    arch = tiny_arch(resolution=resolution, prune=0.25)
    model = build_model(arch).eval()
    path = tmp_path / "m.onnx"
    export_fp32(model, arch, path)
    x = torch.rand(5, 1, 28, 28)
    got = ort_session(path).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - model(x).detach().numpy()).max() < 1e-4


def test_int8_export_quantizes_only_8bit_layers(tmp_path):
    arch = tiny_arch(bits=8)  # stem, s0, s1.b0 and head at 8 bits; s1.b1, classifier fp32
    model = build_model(arch).eval()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m8.onnx"
    export_fp32(model, arch, fp32)
    nodes = export_int8(fp32, arch, int8, np.random.default_rng(0).random(
        (16, 1, 28, 28), dtype=np.float32))
    assert nodes and not any("blocks.1.1/" in n or "classifier" in n for n in nodes)
    graph = onnx.load(str(int8))
    conv_bits = [op.bits for op in onnx_ops(graph) if op.kind != "eltwise" and op.macs]
    assert 8 in conv_bits and 32 in conv_bits
    # Weights are unsigned 8-bit: signed ones (U8S8) saturate on x86 CPUs without VNNI.
    init = {t.name: t for t in graph.graph.initializer}
    weight_types = {init[n.input[0]].data_type for n in graph.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in init}
    assert weight_types == {onnx.TensorProto.UINT8, onnx.TensorProto.INT32}  # INT32: biases
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    ref = ort_session(fp32).run(None, {"image": x})[0]
    assert np.abs(ort_session(int8).run(None, {"image": x})[0] - ref).max() < 0.5


def test_ops_from_arch_equal_ops_from_exported_onnx(tmp_path):
    calib = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    for seed in range(4):
        arch = sample(seed, bits=(32, 8))
        fp32_arch = all_bits(arch, 32)
        export_fp32(build_model(fp32_arch).eval(), fp32_arch, tmp_path / "m.onnx")
        export_int8(tmp_path / "m.onnx", arch, tmp_path / "m8.onnx", calib)
        assert signature(onnx_ops(onnx.load(str(tmp_path / "m.onnx")))) == \
            signature(arch_ops(fp32_arch))
        assert sorted(onnx_ops(onnx.load(str(tmp_path / "m8.onnx"))),
                      key=repr) == sorted(arch_ops(arch), key=repr)


def test_unknown_onnx_op_is_an_error_not_a_skip():
    node = onnx.helper.make_node("Einsum", ["x", "x"], ["y"], equation="ij,ij->ij")
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])])
    with pytest.raises(UnknownOpError, match="Einsum"):
        onnx_ops(onnx.helper.make_model(graph))


def test_int8_nodes_empty_without_8bit_layers(tmp_path):
    arch = tiny_arch(bits=32)
    export_fp32(build_model(arch).eval(), arch, tmp_path / "m.onnx")
    assert int8_nodes(onnx.load(str(tmp_path / "m.onnx")), arch) == []


def test_exported_architectures_get_the_same_prediction_from_either_path(tmp_path):
    from latency_models.devices import MODEL_DIR
    from latency_models.model import DeviceModel

    calib = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    model = DeviceModel.load(MODEL_DIR / "rpi4.json")
    arch = sample(7, bits=(32, 8))
    fp32_arch = all_bits(arch, 32)
    export_fp32(build_model(fp32_arch).eval(), fp32_arch, tmp_path / "m.onnx")
    export_int8(tmp_path / "m.onnx", arch, tmp_path / "m8.onnx", calib)
    for a, path in ((fp32_arch, "m.onnx"), (arch, "m8.onnx")):
        from_onnx = model.price(onnx_ops(onnx.load(str(tmp_path / path))))
        assert from_onnx.latency_ms == pytest.approx(model.price(a).latency_ms, rel=1e-9)
        assert from_onnx.energy_mj == pytest.approx(model.price(arch_ops(a)).energy_mj,
                                                    rel=1e-9)


def _fused_int8_convs(path, tmp_path) -> int:
    """QLinearConv nodes onnxruntime runs after its graph optimizations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sum(n.op_type == "QLinearConv" for n in onnx.load(opts.optimized_model_filepath)
               .graph.node)


def test_profiled_int8_exports_run_every_8bit_conv_as_int8(tmp_path):
    # Profiling times untrained networks. Their zero biases merge into shared tensors that the
    # quantizer leaves in float, so those convolutions would not run as int8 the way a
    # trained model's do; as_trained gives them distinct biases (seed-deterministic).
    from spaces.build import as_trained

    calib = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    arch = tiny_arch(bits=8)
    fp32_arch = all_bits(arch, 32)
    int8_convs = sum(op.bits == 8 and op.kind in ("conv", "dwconv", "pwconv")
                     for op in arch_ops(arch))
    got = {}
    for name, model in (("fresh", build_model(fp32_arch)),
                        ("as_trained", as_trained(build_model(fp32_arch), seed=3))):
        export_fp32(model.eval(), fp32_arch, tmp_path / f"{name}.onnx")
        export_int8(tmp_path / f"{name}.onnx", arch, tmp_path / f"{name}.int8.onnx", calib)
        got[name] = _fused_int8_convs(tmp_path / f"{name}.int8.onnx", tmp_path)
    assert got["as_trained"] == int8_convs
    assert got["fresh"] < int8_convs  # the failure as_trained exists for
    a, b = (as_trained(build_model(fp32_arch), seed=3).state_dict() for _ in range(2))
    set_here = [k for k in a if k.endswith(("running_mean", "running_var", "bias"))]
    assert set_here and all(torch.equal(a[k], b[k]) for k in set_here)
