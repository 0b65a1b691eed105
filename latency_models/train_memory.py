"""Peak memory of one fine-tuning step, predicted from the architecture and the update scheme.

What is counted (float32 throughout, batch ``batch``): every weight of the network (frozen or
trainable: :class:`spaces.lean.LeanNet`, batch norms folded), the trainable weights'
gradients and their optimizer state (SGD with momentum: one buffer each), the input batch,
and over the step the activations: the forward's live tensors (from producer to last
consumer), what autograd keeps for the backward pass of the trainable part (what
:class:`~spaces.lean.LeanNet` keeps: nothing of a frozen convolution's input, a one-byte
mask per ReLU), and the backward's gradients. The step is simulated op by op in the order
torch runs it; the prediction is the largest sum of live bytes plus the persistent ones.
``scripts/edge_memory_benchmark.py`` measures the same step (every allocation seen by glibc
after each torch op) against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from spaces.arch import Arch
from spaces.schemes import Scheme, parse_scheme

__all__ = ["MOMENTUM_BUFFERS", "train_memory", "train_memory_kib", "TrainMemory"]

MOMENTUM_BUFFERS = 1  # SGD with momentum: one state tensor per trainable weight


@dataclass
class _Op:
    kind: str  # conv, relu, hswish, sigmoid, mean, mul, add, fc, loss, input
    ins: tuple[str, ...]
    out: str
    weights: int = 0  # weights of a conv or fc layer
    biases: int = 0
    train_w: bool = False
    train_b: bool = False


@dataclass
class TrainMemory:
    """A fine-tuning step's predicted peak (KiB) and its parts."""

    scheme: str
    batch: int
    total_kib: float
    weights_kib: float  # all weights, float32
    trainable_params: int
    optimizer_kib: float  # momentum buffers
    activations_kib: float  # the peak of the step's live tensors (gradients included)
    input_kib: float


def _tape(arch: Arch, scheme: Scheme) -> tuple[list[_Op], dict[str, int]]:
    """The step's forward ops (as :class:`spaces.lean.LeanNet` runs them) and the elements
    of each tensor per image."""
    ops: list[_Op] = []
    numel: dict[str, int] = {}
    layers = arch.layers(pruned=True)
    n_blocks = sum(1 for layer in layers if layer.kind in ("ds", "ir"))
    trainable_from = n_blocks - scheme.k if scheme.kind == "last" else None
    count = [0]

    def op(kind: str, ins: tuple[str, ...], elements: int, weights: int = 0,
           biases: int = 0, block: int | None = None, head: bool = False) -> str:
        count[0] += 1
        out = f"t{count[0]}"
        numel[out] = elements
        if kind in ("conv", "fc"):
            if scheme.kind == "all" or kind == "fc":
                tw = tb = True
            elif scheme.kind == "bias":
                tw, tb = False, True
            elif scheme.kind == "last":
                tw = tb = head or (block is not None and block >= trainable_from)
            else:
                tw = tb = False
            ops.append(_Op(kind, ins, out, weights, biases, tw, tb))
        else:
            ops.append(_Op(kind, ins, out))
        return out

    c, size = arch.in_chans, arch.input_size
    numel["x"] = c * size * size
    x = "x"
    if arch.resolution != arch.input_size:
        size = arch.resolution
        x = op("input", (x,), c * size * size)
    x = op("input", (x,), c * size * size)  # x - 0.5
    x = op("input", (x,), c * size * size)  # / 0.5
    b = -1
    for layer in layers:
        ci, cm, co, k = layer.in_chs, layer.mid_chs, layer.out_chs, layer.kernel
        hi, ho, act = layer.in_size, layer.out_size, layer.act
        if layer.kind == "stem":
            x = op("relu", (op("conv", (x,), co * ho * ho, ci * co * k * k, co),), co * ho * ho)
        elif layer.kind == "head":
            x = op("conv", (x,), co * ho * ho, ci * co, co, head=True)
            x = op("relu", (x,), co * ho * ho)
            x = op("mean", (x,), co)
        elif layer.kind == "classifier":
            x = op("fc", (x,), co, ci * co, co)
            op("loss", (x,), co)
        else:
            b += 1
            block_in = x
            if layer.kind == "ir":
                x = op("conv", (x,), cm * hi * hi, ci * cm, cm, block=b)
                x = op(act, (x,), cm * hi * hi)
            x = op("conv", (x,), cm * ho * ho, cm * k * k, cm, block=b)
            x = op(act, (x,), cm * ho * ho)
            if layer.rd_chs:
                rd = layer.rd_chs
                g = op("mean", (x,), cm)
                g = op(act, (op("conv", (g,), rd, cm * rd, rd, block=b),), rd)
                g = op("sigmoid", (op("conv", (g,), cm, rd * cm, cm, block=b),), cm)
                x = op("mul", (x, g), cm * ho * ho)
            x = op("conv", (x,), co * ho * ho, cm * co, co, block=b)
            if layer.skip:
                x = op("add", (x, block_in), co * ho * ho)
    return ops, numel


def train_memory(arch: Arch, scheme: str | Scheme, batch: int) -> TrainMemory:
    """Predicted peak memory of one fine-tuning step of ``arch`` (deployed widths) with
    ``scheme`` (``head``, ``bias``, ``last:K``, ``all``) at ``batch`` images."""
    n_blocks = sum(s.depth for s in arch.stages)
    scheme = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme, n_blocks)
    ops, numel = _tape(arch, scheme)

    # which tensors need a gradient
    needs: dict[str, bool] = {"x": False}
    for o in ops:
        needs[o.out] = any(needs[i] for i in o.ins) or o.train_w or o.train_b

    # what each op keeps for backward: (tensor or private buffer, bytes per image)
    saved: dict[int, list[tuple[str, float]]] = {}
    for i, o in enumerate(ops):
        keep: list[tuple[str, float]] = []
        if needs[o.out]:
            if o.kind in ("conv", "fc") and o.train_w:
                keep.append((o.ins[0], 4.0 * numel[o.ins[0]]))
            elif o.kind == "relu":
                keep.append((f"mask{i}", 1.0 * numel[o.ins[0]]))
            elif o.kind == "hswish":
                keep.append((o.ins[0], 4.0 * numel[o.ins[0]]))
            elif o.kind == "sigmoid":
                keep.append((o.out, 4.0 * numel[o.out]))
            elif o.kind == "mul":
                x, g = o.ins
                if needs[g]:
                    keep.append((x, 4.0 * numel[x]))
                if needs[x]:
                    keep.append((g, 4.0 * numel[g]))
            elif o.kind == "loss":
                keep.append((o.out, 4.0 * numel[o.out]))  # log-softmax
        saved[i] = keep

    last_use = {}
    for i, o in enumerate(ops):
        for t in o.ins:
            last_use[t] = i
    holders: dict[str, int] = {}  # tensor -> ops holding it for backward
    for keep in saved.values():
        for t, _ in keep:
            holders[t] = holders.get(t, 0) + 1

    live: dict[str, float] = {}
    peak = 0.0

    def bytes_of(t: str) -> float:
        return 4.0 * numel[t] * batch

    def note(extra: float = 0.0) -> None:
        nonlocal peak
        peak = max(peak, sum(live.values()) + extra)

    # forward
    for i, o in enumerate(ops):
        for t, size in saved[i]:
            if t.startswith("mask"):
                live[t] = size * batch
        live[o.out] = bytes_of(o.out)
        note()
        for t in o.ins:
            if t != "x" and last_use.get(t) == i and not holders.get(t):
                live.pop(t, None)

    # backward, from the loss's gradient
    grads: dict[str, float] = {}
    param_grads = 0.0
    for i in range(len(ops) - 1, -1, -1):
        o = ops[i]
        if not needs[o.out]:
            continue
        if o.kind == "loss":
            grads[o.ins[0]] = bytes_of(o.ins[0])
        else:
            g_out = grads.pop(o.out, 0.0)
            transient = 0.0
            if o.kind in ("conv", "fc"):
                param_grads += 4.0 * (o.weights * o.train_w + o.biases * o.train_b)
            if o.kind == "mul":
                x, g = o.ins
                transient = bytes_of(x) if needs[g] else 0.0  # grad * x before the sum
            new = {t: bytes_of(t) for t in o.ins if needs.get(t)}
            if o.kind == "add":
                # the gradient passes through unchanged to both inputs: one buffer, counted
                # with the shortcut (whose producer runs its backward last)
                new = {}
                for j, t in enumerate(reversed([t for t in o.ins if needs.get(t)])):
                    grads[t] = g_out if j == 0 else 0.0
                g_out = 0.0
            note(sum(grads.values()) + g_out + param_grads + transient + sum(new.values()))
            for t, size in new.items():
                if t in grads and grads[t] > 0:
                    continue  # accumulated in place into the gradient already there
                grads[t] = max(grads.get(t, 0.0), size)
        for t, _ in saved[i]:
            holders[t] = holders.get(t, 1) - 1
            if t.startswith("mask") or (holders[t] <= 0 and last_use.get(t, -1) <= i
                                        and t != "x"):
                live.pop(t, None)
        if o.kind != "loss" and not holders.get(o.out):
            live.pop(o.out, None)

    weights = sum(o.weights + o.biases for o in ops)
    trainable = sum(o.weights * o.train_w + o.biases * o.train_b for o in ops)
    input_b = bytes_of("x")
    total = 4.0 * weights + 4.0 * MOMENTUM_BUFFERS * trainable + input_b + peak
    return TrainMemory(str(scheme), batch, total / 1024, 4.0 * weights / 1024, trainable,
                       4.0 * MOMENTUM_BUFFERS * trainable / 1024, peak / 1024, input_b / 1024)


def train_memory_kib(arch: Arch, scheme: str | Scheme, batch: int) -> float:
    """:func:`train_memory`'s total (KiB)."""
    return train_memory(arch, scheme, batch).total_kib
