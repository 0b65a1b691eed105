"""One training loop for the teacher, the proxy and the export's final training.

Knowledge distillation: ``alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE``, with
the teacher's logits precomputed (no teacher forward pass during training). SGD with Nesterov
momentum and a cosine schedule over the whole run, seeded batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from search.data import to_float

__all__ = ["accuracy", "cosine_lr", "kd_loss", "predict_logits", "Recipe", "sgd", "Trainer"]


@dataclass
class Recipe:
    epochs: float
    batch: int = 128
    lr: float = 0.05
    weight_decay: float = 4e-5
    temperature: float = 4.0
    alpha: float = 0.7  # 0: plain cross-entropy
    hflip: bool = False
    clip_grad: Optional[float] = None  # the gradients' largest global L2 norm (None: unclipped)

    def total_steps(self, n_images: int) -> int:
        """Optimizer steps of the whole run over ``n_images`` images."""
        return max(1, round(self.epochs * max(1, math.ceil(n_images / self.batch))))


def sgd(model: nn.Module, lr: float, weight_decay: float = Recipe.weight_decay
        ) -> torch.optim.SGD:
    """SGD with Nesterov momentum, weight decay on the weights only (not biases or norms)."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=lr, momentum=0.9, nesterov=True)


def cosine_lr(lr: float, step: int, total: int) -> float:
    """The learning rate at ``step`` of a cosine schedule over ``total`` steps."""
    return 0.5 * lr * (1 + math.cos(math.pi * step / total))


def kd_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: Optional[torch.Tensor],
            temperature: float, alpha: float) -> torch.Tensor:
    ce = F.cross_entropy(logits, labels)
    if teacher is None or alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1),
                  reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1 - alpha) * ce


class Trainer:
    """Train ``model`` for ``recipe.epochs`` over (x, y[, teacher logits]), in phases.

    Runs where the model and the tensors are (a GPU when the caller put them there); the batch
    order comes from a CPU generator, so it is the same on any device.

    ``run(steps)`` trains the next ``steps`` steps of the same cosine schedule, so a caller can
    stop half-way (to prune), swap the model with :meth:`set_model`, and continue.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 teacher: Optional[torch.Tensor], recipe: Recipe, seed: int = 0) -> None:
        self.x, self.y, self.teacher, self.recipe = x, y, teacher, recipe
        self.total_steps = recipe.total_steps(len(y))
        self.step = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.set_model(model)

    def set_model(self, model: nn.Module) -> None:
        self.model = model
        self.opt = sgd(model, self.recipe.lr, self.recipe.weight_decay)

    def _next_batch(self) -> torch.Tensor:
        if len(self.order) < self.recipe.batch:
            self.order = torch.cat([self.order, torch.randperm(len(self.y), generator=self.gen)])
        idx, self.order = self.order[:self.recipe.batch], self.order[self.recipe.batch:]
        return idx

    def run(self, steps: Optional[int] = None,
            on_step: Optional[Callable[[int], None]] = None) -> None:
        end = self.total_steps if steps is None else min(self.total_steps, self.step + steps)
        self.model.train()
        while self.step < end:
            lr = cosine_lr(self.recipe.lr, self.step, self.total_steps)
            for group in self.opt.param_groups:
                group["lr"] = lr
            idx = self._next_batch()
            xb = to_float(self.x[idx])  # (B, C, H, W) in [0, 1]
            if self.recipe.hflip:
                flip = (torch.rand(len(idx), generator=self.gen) < 0.5).to(xb.device)
                xb[flip] = xb[flip].flip(3)
            tb = None if self.teacher is None else self.teacher[idx].float()
            loss = kd_loss(self.model(xb), self.y[idx], tb, self.recipe.temperature,
                           self.recipe.alpha)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.recipe.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip_grad)
            self.opt.step()
            self.step += 1
            if on_step is not None:
                on_step(self.step)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(to_float(x[i:i + batch])) for i in range(0, len(x), batch)])


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())
