"""What a network to price is, whatever form it comes in: an ONNX graph or file, or an
``arch.json``, resolved to the architecture it runs (where the graph records it, or lies
beside the ``arch.json`` it was exported from) or else to the graph's ops."""

from __future__ import annotations

import os
from pathlib import Path

from latency_models.estimators import DeviceModelError
from latency_models.ops import signature

__all__ = ["network_of"]


def network_of(source, precision: int | None = None) -> tuple:
    """(what to price, which path) for an ONNX graph or file, or an ``arch.json``: the
    architecture the graph records (``spaces.onnx_io.ARCH_KEY``) or the one in the
    ``arch.json`` beside the file (at 32 bits for an fp32 graph), where its ops are the
    graph's; else the graph's ops.

    ``precision=8`` prices a float graph as fully 8-bit (an architecture at 8 bits in every
    layer; other graphs by :func:`~latency_models.ops.onnx_ops` with ``precision=8``).

    Raises:
        DeviceModelError: a file that does not exist, is not an ONNX graph, or has an op,
            an input size or inputs that cannot be priced (the message names the file).
    """
    import onnx

    from latency_models.ops import UnknownOpError, arch_ops, onnx_ops
    from spaces.arch import Arch, all_bits
    from spaces.onnx_io import recorded_arch

    def at(arch):  # the architecture at the precision asked for
        return arch if precision is None else all_bits(arch, precision)

    def split(graph, bits=None) -> list:
        try:
            return onnx_ops(graph, bits)
        except UnknownOpError as exc:
            raise DeviceModelError(f"{path if path is not None else 'the graph'}: {exc}") \
                from None

    path = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".json":
            return at(Arch.from_json(path.read_text())), "arch"
        try:
            source = onnx.load(str(path))
            onnx.checker.check_model(source)
        except FileNotFoundError:
            raise DeviceModelError(f"{path} does not exist") from None
        except Exception as exc:  # protobuf's DecodeError, onnx's ValidationError, ...
            raise DeviceModelError(f"{path} is not a valid ONNX model "
                                   f"({exc.__class__.__name__}); pass an .onnx file, an "
                                   "arch.json or a folder") from None
    candidates = [recorded_arch(source)]
    beside = None if path is None else path.with_name("arch.json")
    if beside is not None and beside.is_file():
        try:
            arch = Arch.from_json(beside.read_text())
            candidates += [arch, all_bits(arch, 32)]
        except ValueError:
            pass  # not an architecture: the graph is priced by its ops
    candidates = [arch for arch in candidates if arch is not None]
    ops = split(source) if candidates or precision is None else None
    if candidates:
        sig = signature(ops)
        for arch in candidates:
            if signature(arch_ops(arch)) == sig:
                return at(arch), "onnx:arch"
    return (ops if precision is None else split(source, precision)), "onnx:ops"
