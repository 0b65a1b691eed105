"""Settings of fine-tuning on the device, shared by the search (which prices
``train_memory_kib`` with them) and ``python -m search.finetune`` (which runs them).

Plain dataclasses without Hydra, so that the fine-tuning command imports nothing a Raspberry
Pi lacks; :mod:`search.config` registers :class:`FinetuneConfig` as the ``finetune`` group.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FinetuneConfig"]


@dataclass
class FinetuneConfig:
    """``finetune.*``: how a model is fine-tuned on the device."""

    batch: int = 32  # images per step: train_memory_kib is priced at this batch
    update: str = "bias"  # the scheme train_memory_kib prices: head | bias | last:K | all
    epochs: int = 5
    lr: float = 0.01  # SGD with momentum 0.9, cosine schedule
    threads: int = 1  # torch threads (a Raspberry Pi 4 has 4 cores)
