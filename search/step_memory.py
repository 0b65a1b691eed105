"""Measure the peak memory of a fine-tuning step, and run one.

The measurement: glibc's own count of the bytes the process has allocated (``mallinfo2``:
heap in use plus memory-mapped blocks), read after every torch op of the step (a
``TorchDispatchMode`` sees each op, backward ones included); the peak over the step above
what was allocated before it, plus the bytes of the weights, optimizer state and input
batch that exist before the step. Temporaries an op frees before it returns (a
convolution's workspace) are not seen. Linux with glibc 2.33 or later; elsewhere
:func:`measure_step` returns None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["heap_bytes", "measure_step", "train_step"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def heap_bytes() -> Optional[int]:
    """Bytes this process has allocated through malloc now (None without glibc's mallinfo2)."""
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class _PeakAfterEachOp(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.base = heap_bytes() or 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, (heap_bytes() or 0) - self.base)
        return out


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor) -> float:
    """One fine-tuning step (cross-entropy on ``x``'s labels ``y``); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor) -> Optional[float]:
    """Peak memory (KiB) of one :func:`train_step`, measured (see the module's docstring);
    run it after at least one step, so that the optimizer's state exists. None where glibc's
    count is not available."""
    if heap_bytes() is None:
        return None
    state = [v for s in optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor)]
    optimizer.zero_grad(set_to_none=True)  # the last step's gradients are not this step's
    persistent = _bytes(model.parameters()) + _bytes(model.buffers()) + _bytes(state) + \
        _bytes([x])
    with _PeakAfterEachOp() as mode:
        train_step(model, optimizer, x, y)
    return (persistent + mode.peak) / 1024
