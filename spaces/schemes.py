"""Update schemes of fine-tuning: which weights a fine-tuning step trains.

``head`` (the classifier), ``bias`` (every bias: the batch-norm shifts folded into the
convolutions, the squeeze-excitation biases, and the classifier), ``last:K`` (the last K
blocks, the head convolution and the classifier) and ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FinetuneConfig", "parse_scheme", "Scheme", "SCHEMES", "SchemeError",
           "schemes_by_capability"]

SCHEMES = ("head", "bias", "last:K", "all")


class SchemeError(ValueError):
    """An update scheme that is not one of :data:`SCHEMES`."""


class Scheme(tuple):
    """(kind, K): kind is "head", "bias", "last" or "all"; K the blocks of ``last:K``."""

    @property
    def kind(self) -> str:
        return self[0]

    @property
    def k(self) -> int:
        return self[1]

    def __str__(self) -> str:
        return f"last:{self.k}" if self.kind == "last" else self.kind


def parse_scheme(text: str, n_blocks: int | None = None) -> Scheme:
    """``head``, ``bias``, ``last:K`` or ``all`` as a :class:`Scheme` (K checked against
    ``n_blocks`` when given)."""
    text = str(text).strip()
    if text in ("head", "bias", "all"):
        return Scheme((text, 0))
    if text.startswith("last:"):
        try:
            k = int(text[5:])
        except ValueError:
            k = -1
        if k < 1:
            raise SchemeError(f"update={text!r}: K in last:K is a number of blocks, 1 or more "
                              "(e.g. update=last:2)")
        if n_blocks is not None and k > n_blocks:
            raise SchemeError(f"update={text!r}: the model has {n_blocks} blocks; use "
                              f"last:1 to last:{n_blocks}, or update=all")
        return Scheme(("last", k))
    raise SchemeError(f"update={text!r} is not an update scheme; use one of head, bias, "
                      "last:K (e.g. last:2), all, or auto (the most capable within "
                      "budget.train_memory_kib)")


def schemes_by_capability(n_blocks: int) -> list[Scheme]:
    """Every scheme of a network with ``n_blocks`` blocks, the most capable first: ``all``,
    ``last:K`` from K = n_blocks - 1 down to 1, ``bias``, ``head``."""
    return ([Scheme(("all", 0))] + [Scheme(("last", k)) for k in range(n_blocks - 1, 0, -1)]
            + [Scheme(("bias", 0)), Scheme(("head", 0))])


# Settings of fine-tuning on the device, shared by the search (which prices train_memory_kib
# with them) and python -m search.finetune (which runs them): a plain dataclass without Hydra,
# so that the fine-tuning command imports nothing a Raspberry Pi lacks; search.config
# registers it as the ``finetune`` group.
@dataclass
class FinetuneConfig:
    """``finetune.*``: how a model is fine-tuned on the device."""

    batch: int = 32  # images per step: train_memory_kib is priced at this batch
    update: str = "bias"  # the scheme train_memory_kib prices: head | bias | last:K | all
    epochs: int = 5
    lr: float = 0.01  # SGD with momentum 0.9, cosine schedule
    threads: int = 1  # torch threads (a Raspberry Pi 4 has 4 cores)
