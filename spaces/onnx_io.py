"""ONNX export of a built architecture: fp32, and static QDQ int8 on the 8-bit layers."""

from __future__ import annotations

import io
import logging
import os
import warnings
from typing import Iterable

import numpy as np
import onnx
import torch

from spaces.arch import Arch, all_bits
from spaces.build import EdgeNet, onnx_scopes
from spaces.files import atomic_path, write_bytes

__all__ = ["ARCH_KEY", "export_fp32", "export_int8", "export_module", "extract_layers",
           "INPUT_NAME", "int8_nodes", "onnx_accuracy", "OPSET", "ort_session", "OUTPUT_NAME",
           "quantize_qdq", "recorded_arch"]

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# The metadata entry that holds the architecture a graph was exported from (as JSON, at the
# bit-widths the graph runs), so that it is priced exactly as the architecture is.
ARCH_KEY = "edgenas.arch"


def export_fp32(model: EdgeNet, arch: Arch, path: str | os.PathLike) -> None:
    """Export ``model`` (eval mode, batch norm folded) to ``path`` with a dynamic batch axis;
    the graph records its architecture (every layer at 32 bits) under :data:`ARCH_KEY`."""
    export_module(model, (arch.in_chans, arch.input_size, arch.input_size), path,
                  doc=f"arch_id {arch.arch_id}", arch=all_bits(arch, 32))


def _tag(graph: onnx.ModelProto, arch: Arch) -> None:
    """Record ``arch`` in the graph's metadata under :data:`ARCH_KEY` (replacing any)."""
    kept = [p for p in graph.metadata_props if p.key != ARCH_KEY]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    graph.metadata_props.add(key=ARCH_KEY, value=arch.to_json(indent=None))


def recorded_arch(graph: onnx.ModelProto) -> Arch | None:
    """The architecture a graph records under :data:`ARCH_KEY` (None where it records none
    or an unreadable one)."""
    from spaces.arch import ArchError

    for prop in graph.metadata_props:
        if prop.key == ARCH_KEY:
            try:
                return Arch.from_json(prop.value)
            except (ArchError, TypeError, KeyError, ValueError):
                return None
    return None


def export_module(model: torch.nn.Module, shape: tuple[int, int, int],
                  path: str | os.PathLike, doc: str = "", arch: Arch | None = None) -> None:
    """Export any image classifier taking float32 (N, C, H, W) to ``path`` (fp32, opset 17,
    dynamic batch axis, input ``image``, output ``logits``); the file is written atomically.
    ``arch``: the architecture the graph runs, recorded in its metadata."""
    model = model.eval()
    x = torch.rand(1, *shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    graph = onnx.load_from_string(buf.getvalue())
    graph.doc_string = doc
    if arch is not None:
        _tag(graph, arch)
    onnx.checker.check_model(graph)
    write_bytes(path, graph.SerializeToString())


def int8_nodes(graph: onnx.ModelProto, arch: Arch) -> list[str]:
    """Names of the nodes that belong to the layers ``arch`` puts at 8 bits."""
    scopes = onnx_scopes(arch)
    prefixes = tuple(p for layer in arch.layers() if layer.bits == 8 for p in scopes[layer.name])
    if not prefixes:
        return []
    return [n.name for n in graph.graph.node if n.name.startswith(prefixes)]


class _Calibration:
    """onnxruntime calibration reader over a float32 NCHW array in [0, 1]."""

    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self.batches: Iterable = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch.astype(np.float32)}


def export_int8(fp32_path: str | os.PathLike, arch: Arch, path: str | os.PathLike,
                calibration: np.ndarray) -> list[str]:
    """Statically quantize (QDQ, 8-bit weights per channel, uint8 activations) the 8-bit layers.

    Weights are unsigned 8-bit (asymmetric per channel, "U8U8"), not signed: onnxruntime's
    U8S8 kernels on x86 CPUs without VNNI (AVX2, most AVX-512) add products in saturating
    16-bit lanes, and on this project's benchmark machine that cost one all-8-bit network
    8.6 points of accuracy (U8U8: 0.04; same speed). See scripts/proxy_int8_check.py.

    Layers at other bit-widths stay in float. Returns the quantized node names (empty when no
    layer is at 8 bits; the file is then the fp32 graph). The graph records ``arch`` under
    :data:`ARCH_KEY`.
    """
    graph = onnx.load(str(fp32_path))
    nodes = int8_nodes(graph, arch)
    if nodes:
        quantize_qdq(fp32_path, path, calibration, nodes)
        graph = onnx.load(str(path))
    _tag(graph, arch)
    write_bytes(path, graph.SerializeToString())
    return nodes


def quantize_qdq(fp32_path: str | os.PathLike, path: str | os.PathLike,
                 calibration: np.ndarray, nodes: list[str] | None = None) -> None:
    """onnxruntime static QDQ quantization with this project's settings (uint8 weights per
    channel, uint8 activations; see :func:`export_int8`) of ``nodes``, or of every node
    onnxruntime can quantize when ``nodes`` is None. Written atomically."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime logs its pre-processing advice to the root
    try:
        with atomic_path(path) as tmp:
            quantize_static(str(fp32_path), str(tmp), _Calibration(calibration),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QUInt8, per_channel=True,
                            nodes_to_quantize=nodes)
    finally:
        root.setLevel(level)


def onnx_accuracy(path: str | os.PathLike, x: torch.Tensor, y: torch.Tensor,
                  batch: int = 500) -> float:
    """Top-1 accuracy of the graph at ``path`` on uint8 images ``x`` (N, C, H, W; scaled to
    [0, 1] as the graphs expect) with labels ``y``, run by onnxruntime."""
    sess = ort_session(path, threads=torch.get_num_threads())
    correct = 0
    for i in range(0, len(y), batch):
        images = (x[i:i + batch].float() / 255.0).numpy()
        logits = sess.run(None, {INPUT_NAME: images})[0]
        correct += int((logits.argmax(1) == y[i:i + batch].numpy()).sum())
    return correct / len(y)


def ort_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU session pinned to ``threads`` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def extract_layers(graph: onnx.ModelProto, arch: Arch) -> dict[str, onnx.ModelProto]:
    """Each layer of an exported network (fp32 or QDQ) as a model of its own.

    A layer's nodes are found by their exporter scopes (the head includes its global pooling).
    Its inputs are the activations it reads from outside; where an input arrives through a
    quantize/dequantize pair, the pair is kept so that onnxruntime runs the layer in int8 as it
    does inside the network. Used to measure layers alone (``latency_models.profile``).
    """
    from onnx import shape_inference
    from onnx.utils import Extractor

    from spaces.build import onnx_scopes

    graph = shape_inference.infer_shapes(graph)
    nodes = graph.graph.node
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name for t in graph.graph.initializer} | {
        n.output[0] for n in nodes if n.op_type == "Constant"}

    def constant(name: str) -> bool:
        node = producer.get(name)
        return name in consts or (node is not None and all(
            constant(i) for i in node.input if i))

    outputs = {o.name for o in graph.graph.output}
    extractor = Extractor(graph)
    scopes = onnx_scopes(arch)
    out = {}
    for name, prefixes in scopes.items():
        if name == "head":
            prefixes = prefixes + ("/net/global_pool/",)
        inside = [n for n in nodes if n.name.startswith(prefixes)]
        produced = {o for n in inside for o in n.output}
        ins = []
        for n in inside:
            for t in n.input:
                if not t or t in produced or constant(t):
                    continue
                src = producer.get(t)
                if src is not None and src.op_type == "DequantizeLinear":
                    q = producer.get(src.input[0])
                    if q is not None and q.op_type == "QuantizeLinear":
                        t = q.input[0]
                if t not in ins:
                    ins.append(t)
        consumed_outside = {i for n in nodes if n not in inside for i in n.input}
        outs = [t for t in produced if t in consumed_outside or t in outputs]
        # Keep only the outputs that the rest of the network reads through the layer's last
        # tensor (quantize/dequantize copies of internal tensors count as internal).
        outs = [t for t in outs if not any(
            n.op_type == "QuantizeLinear" and t in n.input and n in inside for n in nodes)]
        model = extractor.extract_model(ins, sorted(outs))
        model.doc_string = f"layer {name} of arch_id {arch.arch_id}"
        out[name] = model
    return out
