"""Split a network into the ops a runtime executes, from an :class:`Arch` or from ONNX.

Both paths give the same list for an exported architecture (a test checks it), so a network
is priced the same way whether the search asks (fast, from the architecture) or a user points
at an ONNX file.

Op kinds: ``conv`` (dense kxk), ``dwconv``, ``pwconv`` (1x1, also the squeeze-excitation
convolutions), ``gconv`` (grouped, neither dense nor depthwise: many runtimes run it on a slow
path), ``fc``, ``pool`` (global average pooling, means and windowed pooling), ``add``
(the sum of two activations: residual connections) and ``eltwise`` (activations, scaling,
multiplications, resizing and normalization). Batch norm is folded into the convolutions.
``bits`` is the precision the op runs at: 32 or 8 (onnxruntime QDQ) for convs and fully
connected layers; element-wise and pooling ops are counted at 32. Convolutions and pooling
also carry their shape (input channels, output channels, kernel, stride, input size), which
the device models' features and lookup keys use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spaces.arch import Arch, Layer

if TYPE_CHECKING:
    import onnx

__all__ = ["arch_ops", "arch_units", "conv_op", "gpool_op", "input_ops", "KINDS", "layer_ops",
           "onnx_ops", "Op", "op_key", "run_bits", "signature", "tensor_shapes",
           "UnknownOpError"]

# ``gconv`` (grouped, not depthwise: ResNeXt, RegNet) comes last so that the features of the
# other kinds keep their places in device models fitted before it existed.
KINDS = ("conv", "dwconv", "pwconv", "fc", "pool", "add", "eltwise", "gconv")


class UnknownOpError(ValueError):
    """An ONNX graph that cannot be priced: an op that no rule prices, several inputs, or a
    dynamic input size."""


@dataclass(frozen=True)
class Op:
    """One executed op. ``elems`` counts input plus output tensor elements (memory traffic)."""

    kind: str
    macs: int
    elems: int
    bits: int = 32
    cin: int = 0
    cout: int = 0
    kernel: int = 0
    stride: int = 0
    size: int = 0
    groups: int = 1  # a grouped (not depthwise) convolution's groups: ResNeXt, RegNet

    @property
    def weights(self) -> int:
        """Weights read by a convolution or fully connected layer (0 for other ops)."""
        if self.kind == "dwconv":
            return self.cout * self.kernel * self.kernel
        if self.kind in ("conv", "pwconv", "gconv"):
            return self.cin // self.groups * self.cout * self.kernel * self.kernel
        return self.macs if self.kind == "fc" else 0


def conv_op(kind: str, cin: int, cout: int, k: int, hin: int, hout: int, bits: int,
          groups: int = 1, stride: int = 1) -> Op:
    macs = hout * hout * cout * (cin // groups) * k * k
    return Op(kind, macs, cin * hin * hin + cout * hout * hout, bits, cin, cout, k, stride, hin)


def gpool_op(chs: int, size: int) -> Op:
    """Global average pooling of a (chs, size, size) tensor."""
    return Op("pool", 0, chs * size * size + chs, 32, chs, chs, 0, 0, size)


def _elt(n_elems: int, n_inputs: int = 1) -> Op:
    return Op("eltwise", 0, n_elems * (n_inputs + 1))


def run_bits(bits: int, native_bits: tuple[int, ...] = ()) -> int:
    """The precision a layer at ``bits`` runs at: exactly ``bits`` on a device that runs it
    natively (``native_bits``, e.g. an accelerator with 4/6/8-bit arithmetic), otherwise what
    an ONNX export runs: int8 for 8 bits and below, float above."""
    return bits if bits in native_bits else _quant_bits(bits)


def _quant_bits(bits: int) -> int:
    """What an ONNX export runs a layer at: int8 for 8 bits and below, float otherwise."""
    return 8 if bits <= 8 else 32


def layer_ops(layer: Layer, native_bits: tuple[int, ...] = ()) -> list[Op]:
    """The ops of one layer of an architecture."""
    b = run_bits(layer.bits, native_bits)
    ci, cm, co, k = layer.in_chs, layer.mid_chs, layer.out_chs, layer.kernel
    hi, ho = layer.in_size, layer.out_size
    # QDQ int8 absorbs a ReLU that follows a quantized conv into its output range.
    relu_gone = b <= 8

    def act(n: int, kind: str = layer.act) -> list[Op]:
        return [] if (relu_gone and kind == "relu") else [_elt(n)]

    s = layer.stride
    if layer.kind == "stem":
        return [conv_op("conv", ci, co, k, hi, ho, b, stride=s), *act(co * ho * ho, "relu")]
    if layer.kind == "head":
        return [conv_op("pwconv", ci, co, 1, hi, ho, b), *act(co * ho * ho, "relu"),
                gpool_op(co, ho)]
    if layer.kind == "classifier":
        return [Op("fc", ci * co, ci + co, b, ci, co, 1, 1, 1)]
    ops = []
    if layer.kind == "ir":
        ops += [conv_op("pwconv", ci, cm, 1, hi, hi, b), *act(cm * hi * hi)]
    ops += [conv_op("dwconv", cm, cm, k, hi, ho, b, groups=cm, stride=s), *act(cm * ho * ho)]
    if layer.rd_chs:
        n = cm * ho * ho
        ops += [gpool_op(cm, ho),
                conv_op("pwconv", cm, layer.rd_chs, 1, 1, 1, b), *act(layer.rd_chs),
                conv_op("pwconv", layer.rd_chs, cm, 1, 1, 1, b), _elt(cm),  # sigmoid gate
                Op("eltwise", 0, n + cm + n)]  # scale: (N,C,H,W) * (N,C,1,1)
    ops.append(conv_op("pwconv", cm, co, 1, ho, ho, b))
    if layer.skip:
        ops.append(Op("add", 0, 3 * co * ho * ho))
    return ops


def input_ops(arch: Arch) -> list[Op]:
    """The input preprocessing: an optional resize, then (x - 0.5) / 0.5."""
    n_in = arch.in_chans * arch.input_size ** 2
    n_res = arch.in_chans * arch.resolution ** 2
    ops = [] if arch.resolution == arch.input_size else [Op("eltwise", 0, n_in + n_res)]
    return ops + [_elt(n_res), _elt(n_res)]


def arch_units(arch: Arch, native_bits: tuple[int, ...] = ()) -> list[list[Op]]:
    """The deployed (pruned) network as units: its input preprocessing, then each layer."""
    return [input_ops(arch)] + [layer_ops(layer, native_bits)
                                for layer in arch.layers(pruned=True)]


def arch_ops(arch: Arch, native_bits: tuple[int, ...] = ()) -> list[Op]:
    """The ops of the deployed (pruned) network, input preprocessing included."""
    return [op for unit in arch_units(arch, native_bits) for op in unit]


def op_key(op: Op) -> str:
    """The exact identity of one op: the key of its entry in a device's lookup table."""
    key = (f"{op.kind},{op.macs},{op.elems},{op.bits},{op.cin},{op.cout},{op.kernel},"
           f"{op.stride},{op.size}")
    return key if op.groups == 1 else f"{key},g{op.groups}"


def signature(ops: list[Op]) -> str:
    """Content hash of an op list: the key of measured networks in a device model."""
    keys = sorted(op_key(o) for o in ops)
    text = ";".join(keys)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- ONNX ----------------------------------------------------------------------------------
_ELTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Clip",
            "Resize", "Tanh", "LeakyRelu", "PRelu", "Max", "Min", "Neg", "Exp", "Sqrt", "Pow",
            "Softmax", "Upsample", "BatchNormalization", "Elu", "Selu", "Softplus", "Mish",
            "Gelu", "Erf", "Abs", "Reciprocal", "LogSoftmax", "InstanceNormalization",
            "LayerNormalization", "LpNormalization",
            # memory moved, nothing computed: a runtime copies the tensor
            "Concat", "Split", "Pad", "Transpose", "Expand", "Tile", "DepthToSpace",
            "SpaceToDepth"}
_POOL = {"GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool", "GlobalMaxPool",
         "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "GlobalLpPool",
         "LpPool"}
_FREE = {"Identity", "Constant", "Flatten", "Reshape", "Shape", "Gather", "Unsqueeze",
         "Squeeze", "Slice", "QuantizeLinear", "DequantizeLinear", "Cast", "Dropout"}
_RELU = {"Relu", "Clip"}  # absorbed into an int8 convolution's output range (ReLU, ReLU6)


def _graph_input(graph) -> str | None:
    """The one image input of a graph, checked: a fixed (C, H, W) and one input only. None
    for a graph without inputs (whose output does not depend on its input: the exporter
    dropped it; its ops compute on constants and are priced as they are)."""
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs:
        return None
    if len(inputs) != 1:
        raise UnknownOpError(
            f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); the "
            "latency model prices a network with one image input (batch, channels, height, "
            "width): export it with one input")
    dims = inputs[0].type.tensor_type.shape.dim
    fixed = [d.dim_value > 0 for d in dims[1:]]
    if not dims or not all(fixed):
        shape = ", ".join(str(d.dim_value) if d.dim_value > 0 else (d.dim_param or "?")
                          for d in dims)
        raise UnknownOpError(
            f"input {inputs[0].name!r} has shape ({shape}): a dynamic size other than the "
            "batch cannot be priced (latency depends on it); export the graph at the input "
            "size it will run at, e.g. torch.onnx.export with a 1x3x224x224 example and no "
            "dynamic height or width")
    return inputs[0].name


def _run_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every node output's shape, from one run of the graph on zeros (batch 1) with
    onnxruntime: for graphs whose shapes static inference cannot resolve."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    named = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in named:
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
                named.add(out)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        name = _graph_input(model.graph)
        dims = next(i for i in model.graph.input if i.name == name).type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(dims.elem_type)
        shape = [1] + [d.dim_value for d in dims.shape.dim[1:]]
        values = session.run(None, {inp.name: np.zeros(shape, dtype)})
    except Exception as exc:  # onnxruntime's own errors: the graph does not run
        raise UnknownOpError(f"the graph's tensor shapes could not be inferred, and it did "
                             f"not run in onnxruntime to measure them ({exc.__class__.__name__}"
                             f": {str(exc).splitlines()[0][:200]})") from None
    return {o.name: tuple(np.shape(v)) for o, v in zip(session.get_outputs(), values)}


def tensor_shapes(model) -> tuple:
    """(the graph with inferred shapes, every tensor's shape at batch 1): static shape
    inference, or where it leaves a shape open, one run of the graph on zeros.

    Raises:
        UnknownOpError: several inputs, a dynamic height or width, or a graph whose shapes
            neither inference nor a run resolves.
    """
    from onnx import shape_inference

    model = shape_inference.infer_shapes(model)
    graph = model.graph
    has_input = _graph_input(graph) is not None
    shapes: dict[str, tuple[int, ...]] = {}
    unresolved = False
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
        unresolved |= any(d.dim_value <= 0 for d in dims[1:])
    outputs = {o for node in graph.node for o in node.output if o}
    if has_input and (unresolved or not outputs <= set(shapes)):
        # Shapes computed at run time (a "same" padding from the input's size): run the
        # graph once on zeros and read every tensor's shape.
        shapes.update(_run_shapes(model))
    for t in graph.initializer:
        shapes[t.name] = tuple(t.dims)
    return model, shapes


def onnx_ops(model: "onnx.ModelProto", precision: int | None = None) -> list[Op]:
    """The ops of an ONNX graph (batch 1), with each conv's precision read from QDQ nodes.

    Args:
        model: the graph (an ``onnx.ModelProto``).
        precision: None prices the graph as it is; 8 prices a float graph as fully 8-bit
            (what TFLite's integer quantization or an int8 QDQ export of it runs: every
            convolution and fully connected layer at 8 bits, a ReLU or ReLU6 that follows
            one absorbed into its output range).

    Raises:
        UnknownOpError: the graph has an op type that no rule prices, several inputs, or an
            input of dynamic height or width.
    """
    import numpy as np
    import onnx

    model, shapes = tensor_shapes(model)
    graph = model.graph
    has_input = _graph_input(graph) is not None
    init = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
    constants = set(init) | {n.output[0] for n in graph.node if n.op_type == "Constant"}

    def is_const(name: str) -> bool:
        node = producer.get(name)
        while node is not None and node.op_type in ("DequantizeLinear", "Identity"):
            name = node.input[0]
            node = producer.get(name)
        return name in constants

    def numel(name: str) -> int:
        if name not in shapes:
            raise UnknownOpError(f"ONNX tensor {name!r} has no inferred shape")
        return int(np.prod(shapes[name])) if shapes[name] else 1

    def elems(node) -> int:
        ins = [i for i in node.input if i and not is_const(i)]
        return sum(numel(i) for i in ins) + sum(numel(o) for o in node.output)

    def bits(node) -> int:
        if precision is not None:
            return precision
        # QDQ quantizes a node's weights only when the node itself runs in int8.
        src = producer.get(node.input[1])
        if src is not None and src.op_type == "DequantizeLinear":
            return 8
        weight = init.get(node.input[1])
        return 16 if weight is not None and weight.data_type == onnx.TensorProto.FLOAT16 else 32

    # Tensors computed from shapes or constants only (e.g. Resize's target size, a padding
    # computed from the input's shape): folded by the runtime, no cost per image. (A graph
    # without inputs computes on constants only: its ops are kept and priced.)
    shape_only: set[str] = set()
    for node in graph.node:
        ins = [i for i in node.input if i and i not in constants]
        if node.op_type == "Shape" or (all(i in shape_only for i in ins) and (
                ins or (has_input and node.input))):
            shape_only.update(node.output)

    ops = []
    low_outputs: set[str] = set()  # outputs of 8-bit convolutions (a following ReLU folds in)
    for node in graph.node:
        t = node.op_type
        if t in _FREE or (node.output and node.output[0] in shape_only):
            continue
        if t == "Conv":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            groups = attrs.get("group", 1)
            w = shapes[node.input[1]]  # (cout, cin/groups, k, k)
            out = shapes[node.output[0]]
            cout, cin_g, k = w[0], w[1], w[2]
            macs = int(np.prod(out[2:])) * cout * cin_g * k * w[3]
            kind = ("dwconv" if groups > 1 and cin_g == 1 else "gconv" if groups > 1 else
                    "pwconv" if k == 1 and w[3] == 1 else "conv")
            stride = attrs.get("strides", [1])[0]
            size = shapes[node.input[0]][2] if len(shapes[node.input[0]]) > 2 else 1
            ops.append(Op(kind, macs, elems(node), bits(node), cin_g * groups, cout, k, stride,
                          size, groups if kind == "gconv" else 1))
            if ops[-1].bits <= 8 and consumers.get(node.output[0]) == 1:
                low_outputs.add(node.output[0])
        elif t in ("Gemm", "MatMul"):
            w = shapes[node.input[1]]
            transposed = t == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            cin, cout = (w[1], w[0]) if transposed else (w[0], w[-1])
            ops.append(Op("fc", int(np.prod(w)), elems(node), bits(node), cin, cout, 1, 1, 1))
        elif t in _POOL:
            shape = shapes.get(node.input[0], ())
            chs = shape[1] if len(shape) > 1 else 0
            size = shape[2] if len(shape) > 2 else 1
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            kernel = attrs.get("kernel_shape", [0])[0]
            stride = attrs.get("strides", [1])[0] if kernel else 0
            out = numel(node.output[0])
            ops.append(Op("pool", out * kernel * kernel, elems(node), 32, chs, chs, kernel,
                          stride, size))
        elif t in ("Add", "Sum") and sum(1 for i in node.input if i and not is_const(i)) > 1:
            ops.append(Op("add", 0, elems(node)))
        elif precision is not None and t in _RELU and node.input[0] in low_outputs:
            continue  # folded into the 8-bit convolution before it
        elif t in _ELTWISE:
            ops.append(Op("eltwise", 0, elems(node)))
        else:
            known = ", ".join(sorted(_POOL | _ELTWISE))
            raise UnknownOpError(f"op type {t!r} (node {node.name!r}) is not one the latency "
                                 f"model knows; known: Conv, Gemm, MatMul, {known}, and shape "
                                 f"bookkeeping ({', '.join(sorted(_FREE))})")
    return ops
