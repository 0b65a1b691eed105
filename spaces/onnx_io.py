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

from spaces.arch import Arch
from spaces.build import EdgeNet, onnx_scopes
from spaces.files import atomic_path, write_bytes

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def export_fp32(model: EdgeNet, arch: Arch, path: str | os.PathLike) -> None:
    """Export ``model`` (eval mode, batch norm folded) to ``path`` with a dynamic batch axis."""
    model = model.eval()
    x = torch.rand(1, arch.in_chans, arch.input_size, arch.input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    graph = onnx.load_from_string(buf.getvalue())
    graph.doc_string = f"arch_id {arch.arch_id}"
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
    layer is at 8 bits; the file is then the fp32 graph).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32_path))
    nodes = int8_nodes(graph, arch)
    if not nodes:
        write_bytes(path, graph.SerializeToString())
        return []
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
    return nodes


def ort_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU session pinned to ``threads`` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
