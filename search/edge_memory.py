"""The memory entries of an export's (or a fine-tuned model's) ``metrics.json`` and card."""

from __future__ import annotations

from pathlib import Path

from latency_models.memory import graph_peak_memory_kib
from latency_models.train_memory import train_memory
from spaces.arch import Arch
from spaces.schemes import Scheme

__all__ = ["card_section", "memory_record", "SCHEDULE_WORDS"]

SCHEDULE_WORDS = ("one inference at batch 1; ops in graph order, each tensor live from its "
                  "producer to its last consumer, weights not counted, a tensor that the int8 "
                  "export quantizes held at 8 bits")


def memory_record(arch: Arch, files: dict[str, Path], batch: int) -> dict:
    """``peak_memory_kib`` of each ONNX file (walked from the file itself) and the
    predicted ``train_memory_kib`` of a fine-tuning step at ``batch`` per update scheme."""
    n_blocks = sum(s.depth for s in arch.stages)
    schemes = [Scheme(("head", 0)), Scheme(("bias", 0))] + \
        [Scheme(("last", k)) for k in sorted({1, max(1, n_blocks // 2)})] + [Scheme(("all", 0))]
    peak = {name: round(graph_peak_memory_kib(path), 3) for name, path in files.items()}
    train = {str(s): round(train_memory(arch, s, batch).total_kib, 1) for s in schemes}
    return {"peak_memory_kib": {**peak, "schedule": SCHEDULE_WORDS},
            "train_memory_kib": {**train, "batch": batch, "blocks": n_blocks,
                                 "optimizer": "SGD with momentum, float32, batch norms folded",
                                 "predicted_by": "latency_models.train_memory"}}


def card_section(m: dict) -> str:
    """The model card's "Memory" section from :func:`memory_record`'s entries in ``m``."""
    peak, train = m["peak_memory_kib"], m["train_memory_kib"]
    files = [k for k in peak if k != "schedule"]
    schemes = [k for k in train if k not in ("batch", "blocks", "optimizer", "predicted_by")]
    rows = "\n".join(f"| {k} | {peak[k]:,.1f} |" for k in files)
    train_rows = "\n".join(f"| {k} | {train[k]:,.0f} |" for k in schemes)
    return f"""## Memory
Peak activation memory ({peak['schedule']}):

| file | peak KiB |
|---|---|
{rows}

Fine-tuning on the device (`python -m search.finetune`), one step at batch {train['batch']}
(weights, the trained weights' gradients and momentum, the activations kept for backward;
predicted):

| update | train KiB |
|---|---|
{train_rows}
"""
