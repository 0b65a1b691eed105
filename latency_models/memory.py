"""Peak activation memory of one inference, from an architecture or any ONNX graph.

The schedule (what ``peak_memory_kib`` assumes of the runtime): ops run one at a time in the
graph's topological order (the order the exporter writes, which is the order onnxruntime's
sequential executor follows for these graphs); a tensor is allocated when its producer runs
and freed after its last consumer ran (the graph's input from the start, its output to the
end); weights and constants are not activations (they are ``size_kib``). View ops (Flatten,
Reshape, Squeeze, Unsqueeze, Identity) share their input's buffer. The peak is the largest
sum of live tensors over the ops, batch 1.

Precision: a tensor that the int8 export quantizes (a layer at 8 bits reads or writes it, as
onnxruntime's QDQ quantizer places its quantize nodes) is held at 8 bits, in the fused int8
kernels' uint8 form; other tensors are float32. (Not counted: the float copy a
quantize or dequantize node makes where a float layer meets an 8-bit one.) On a device that
runs lower bit-widths natively (``native_bits``) such tensors are held at that width.

Two independent walks give the number: :func:`arch_schedule` writes the schedule of an
architecture from its layers, :func:`onnx_schedule` reads it from a graph (quantize and
dequantize nodes collapsed); a test and ``scripts/edge_memory_benchmark.py`` check that they
agree on exported networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latency_models.ops import run_bits
from spaces.arch import Arch

__all__ = ["arch_schedule", "graph_peak_memory_kib", "liveness_peak", "onnx_schedule",
           "peak_memory_kib", "Schedule", "VIEW_OPS"]

VIEW_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"}


@dataclass
class Schedule:
    """Ops in execution order and the activation tensors they read and write.

    ``nodes``: (name, inputs, outputs) per op; ``elements``: elements of each tensor at batch
    1; ``bits``: its storage width (32 unless quantized); ``alias``: a view's tensor -> the
    tensor whose buffer it shares; ``inputs`` / ``outputs``: the graph's.
    """

    nodes: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    elements: dict[str, int] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def root(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name


def liveness_peak(s: Schedule, batch: int = 1) -> tuple[float, str]:
    """(peak bytes of live activations, the op at which it is reached)."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for name in s.inputs:
        first[s.root(name)] = -1
    for i, (_, ins, outs) in enumerate(s.nodes):
        for t in outs:
            first.setdefault(s.root(t), i)
            last[s.root(t)] = i
        for t in ins:
            if s.root(t) in first:
                last[s.root(t)] = i
    for name in s.outputs:
        last[s.root(name)] = len(s.nodes)
    # a buffer's width: the narrowest of the tensors sharing it (a view of a quantized one)
    width: dict[str, int] = {}
    for t, b in s.bits.items():
        r = s.root(t)
        width[r] = min(width.get(r, 32), b)
    delta = [0.0] * (len(s.nodes) + 2)
    for buf, start in first.items():
        size = s.elements[buf] * batch * width.get(buf, 32) / 8
        delta[max(start, 0)] += size
        delta[min(last.get(buf, start), len(s.nodes)) + 1] -= size
    peak, at, live = 0.0, "", 0.0
    for i, (name, _, _) in enumerate(s.nodes):
        live += delta[i]
        if live > peak:
            peak, at = live, name
    return peak, at


# ---- from an architecture -----------------------------------------------------------------
def arch_schedule(arch: Arch, native_bits: tuple[int, ...] = ()) -> Schedule:
    """The schedule of the deployed (pruned) network as its export runs it: the nodes of
    :func:`spaces.onnx_io.export_fp32`'s graph, in its order, each tagged with its layer."""
    s = Schedule(inputs=("image",), outputs=("logits",))
    layer_of: dict[int, str] = {}  # node index -> layer name (nodes of no layer: absent)
    low: dict[str, int] = {}  # layer -> bits where it runs below 32
    count = [0]

    def node(layer: str | None, ins: tuple[str, ...], elements: int,
             out: str | None = None) -> str:
        count[0] += 1
        out = out or f"t{count[0]}"
        if layer is not None:
            layer_of[len(s.nodes)] = layer
        s.nodes.append((f"{layer or 'input'}#{count[0]}", ins, (out,)))
        s.elements[out] = elements
        return out

    c, size = arch.in_chans, arch.input_size
    s.elements["image"] = c * size * size
    x = "image"
    if arch.resolution != arch.input_size:
        size = arch.resolution
        x = node(None, (x,), c * size * size)
    x = node(None, (x,), c * size * size)  # (x - 0.5)
    x = node(None, (x,), c * size * size)  # / 0.5
    for layer in arch.layers(pruned=True):
        b = run_bits(layer.bits, native_bits)
        if b < 32:
            low[layer.name] = b
        relu_gone = b <= 8  # fused into the 8-bit convolution before it

        def act(t: str, n: int, kind: str = layer.act) -> str:
            return t if (relu_gone and kind == "relu") else node(layer.name, (t,), n)

        name, hi, ho = layer.name, layer.in_size, layer.out_size
        cm, co = layer.mid_chs, layer.out_chs
        if layer.kind == "stem":
            x = act(node(name, (x,), co * ho * ho), co * ho * ho, "relu")
            continue
        if layer.kind == "head":
            x = act(node(name, (x,), co * ho * ho), co * ho * ho, "relu")
            x = node(None, (x,), co)  # global average pooling
            flat = f"t{count[0]}.flat"
            s.alias[flat], s.elements[flat] = x, co
            x = flat
            continue
        if layer.kind == "classifier":
            x = node(name, (x,), co, out="logits")
            continue
        block_in = x
        if layer.kind == "ir":
            x = act(node(name, (x,), cm * hi * hi), cm * hi * hi)
        x = act(node(name, (x,), cm * ho * ho), cm * ho * ho)  # depthwise
        if layer.rd_chs:
            g = node(name, (x,), cm)  # squeeze: mean over the feature map
            g = act(node(name, (g,), layer.rd_chs), layer.rd_chs)
            g = node(name, (node(name, (g,), cm),), cm)  # expand, sigmoid gate
            x = node(name, (x, g), cm * ho * ho)  # scale
        x = node(name, (x,), co * ho * ho)  # project
        if layer.skip:
            x = node(name, (x, block_in), co * ho * ho)
    # a tensor is quantized when a low-precision layer writes or reads it
    for i, (_, ins, outs) in enumerate(s.nodes):
        b = low.get(layer_of.get(i, ""))
        if b is None:
            continue
        for t in ins + outs:
            s.bits[t] = min(s.bits.get(t, 32), b)
    return s


# ---- from an ONNX graph -------------------------------------------------------------------
def onnx_schedule(model) -> Schedule:
    """The schedule of an ONNX graph (a ``ModelProto``): its nodes in order, constants and
    weights left out, quantize/dequantize pairs collapsed (a tensor a QuantizeLinear reads is
    held at that node's integer width)."""
    import onnx

    from latency_models.ops import UnknownOpError, tensor_shapes

    model, shapes = tensor_shapes(model)
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    s = Schedule()
    s.inputs = tuple(i.name for i in graph.input if i.name not in consts)
    s.outputs = tuple(o.name for o in graph.output)
    dtype = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    live = set(s.inputs)  # tensors computed from the input (the rest are constants)

    def numel(name: str) -> int:
        if name not in shapes:
            raise UnknownOpError(f"ONNX tensor {name!r} has no inferred shape")
        n = 1
        for d in shapes[name]:
            n *= d
        return n

    for t in s.inputs:
        s.elements[t] = numel(t)
    for node in graph.node:
        ins = tuple(i for i in node.input if i in live)
        if not ins:
            continue  # computed from constants and shapes only: folded by the runtime
        outs = tuple(o for o in node.output if o)
        live.update(outs)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or \
                node.op_type in VIEW_OPS:
            s.alias[outs[0]] = ins[0]
            s.elements[outs[0]] = numel(outs[0])
            if node.op_type == "QuantizeLinear":
                out_type = dtype.get(outs[0], onnx.TensorProto.UINT8)
                width = 8 * onnx.helper.tensor_dtype_to_np_dtype(out_type).itemsize
                s.bits[ins[0]] = min(s.bits.get(ins[0], 32), width)
            continue
        for o in outs:
            s.elements[o] = numel(o)
            if o in dtype and dtype[o] != onnx.TensorProto.FLOAT:
                width = 8 * onnx.helper.tensor_dtype_to_np_dtype(dtype[o]).itemsize
                s.bits[o] = min(s.bits.get(o, 32), width)
        s.nodes.append((node.name or node.op_type, ins, outs))
    return s


def peak_memory_kib(network, native_bits: tuple[int, ...] = ()) -> float:
    """Peak activation memory of one inference at batch 1 (KiB): an :class:`Arch` by
    :func:`arch_schedule`, an ONNX ``ModelProto`` by :func:`onnx_schedule`."""
    schedule = arch_schedule(network, native_bits) if isinstance(network, Arch) \
        else onnx_schedule(network)
    return liveness_peak(schedule)[0] / 1024


def graph_peak_memory_kib(source, precision: int | None = None) -> float:
    """Peak activation memory (KiB) of an ONNX graph or ``.onnx`` file walked from its nodes
    (:func:`onnx_schedule`); ``precision=8``: every activation but the image at 8 bits (a
    fully integer-quantized graph)."""
    import onnx

    graph = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    schedule = onnx_schedule(graph)
    if precision is not None:
        schedule.bits = {t: min(precision, 32) for t in schedule.elements
                         if t not in schedule.inputs}  # (the image stays float)
    return liveness_peak(schedule)[0] / 1024
