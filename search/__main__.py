"""python -m search +device=NAME [overrides]: run (or resume) the architecture search."""

from omegaconf import DictConfig

from search.cli import HydraCommand
from search.config import load

COMMAND = HydraCommand(
    "search",
    "Search (or resume) the study of a device: Optuna samples MobileNet-style networks,\n"
    "each is priced by the device's latency model and scored by the accuracy proxy.\n"
    "The same command resumes the study; search.n_trials is the study's total.",
    ["+device=rpi4", "+device=rpi4 search.n_trials=100 budget.latency_ms=0.8",
     "+device=host proxy=zero_cost search.objectives=[accuracy,latency_ms,size_kib]",
     "+device=rpi4 space=mobilenet_224 data=imagefolder data.root=~/photos"])


def main(dc: DictConfig) -> None:
    cfg = load(dc)  # config errors are reported before the heavy imports
    from search.run import run_search

    run_search(cfg)


if __name__ == "__main__":
    COMMAND.run(main)
