"""python -m search.train_supernet +device=NAME [overrides]: train the supernet of
``proxy=supernet`` ahead of a search, on one process or many.

The search trains its supernet itself on first use; this command does only that step, so it
can run where there is more compute, on one or many GPUs or CPU processes under ``torchrun``::

    torchrun --standalone --nproc_per_node=4 -m search.train_supernet +device=rpi4

Each process takes its part of every batch and the gradients are averaged across processes
(``nccl`` on GPUs, ``gloo`` on CPUs), as DistributedDataParallel does. The result lands in the
cache (``cache_dir``), where ``python -m search +device=NAME proxy=supernet`` with the same
settings finds it; ``proxy.supernet.file=`` points a search at a copy elsewhere.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from search.cli import HydraCommand
from search.config import load

__all__ = ["COMMAND", "main"]

COMMAND = HydraCommand(
    "search.train_supernet",
    "Train (or resume) the supernet of proxy=supernet for these settings, ahead of the\n"
    "search; under torchrun, across its processes.",
    ["+device=rpi4", "+device=rpi4 proxy.supernet.epochs=24 search.device=cuda"])


def main(dc: DictConfig) -> None:
    cfg = load(dc)
    cfg.proxy.kind = "supernet"
    import torch
    import torch.distributed as dist

    from search.data import load_for
    from search.proxy import prepare_proxy_data, to_device
    from search.supernet import train_supernet
    from search.teacher import TeacherCache

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = cfg.search.torch_device()
    if world > 1:
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.set_num_threads(cfg.search.thread_count())
    try:
        dataset = load_for(cfg)
        teacher = TeacherCache(cfg.proxy.teacher, dataset, cfg.cache_dir, cfg.data.val_images,
                               cfg.seed)
        if rank == 0:
            teacher.model()  # trained (or read) once, by one process
        if world > 1:
            dist.barrier()
        teacher.model()
        data = to_device(prepare_proxy_data(cfg, dataset, teacher), device)
        shape = dict(in_chans=dataset.in_chans, input_size=dataset.size,
                     num_classes=dataset.num_classes)
        bar = []

        def on_step(step: int, total: int) -> None:
            from tqdm import tqdm

            if not bar:
                bar.append(tqdm(total=total, initial=step - 1, unit="step", desc="supernet"))
            bar[0].update(step - bar[0].n)

        _, path = train_supernet(cfg, data, shape, on_step=on_step, device=device,
                                 teacher=teacher.recipe)
        if bar:
            bar[0].close()
        if rank == 0:
            print(f"supernet: {path} ({world} process{'es' if world > 1 else ''})")
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    COMMAND.run(main)
