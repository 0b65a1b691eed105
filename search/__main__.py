"""python -m search +device=NAME [overrides]: run (or resume) the architecture search."""

import hydra
from omegaconf import DictConfig

from search.cli import HydraCommand
from search.config import load
from search.errors import guarded

COMMAND = HydraCommand(
    "search",
    "Search (or resume) the study of a device: Optuna samples MobileNet-style networks,\n"
    "each is priced by the device's latency model and scored by the accuracy proxy.\n"
    "The same command resumes the study; search.n_trials is the study's total.",
    ["+device=rpi4", "+device=rpi4 search.n_trials=100 budget.latency_ms=0.8",
     "+device=host proxy=zero_cost search.objectives=[accuracy,latency_ms,size_kib]",
     "+device=rpi4 data=imagefolder data.root=~/photos data.size=32"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dc: DictConfig) -> None:
    def go() -> None:
        cfg = load(dc)  # config errors are reported before the heavy imports
        from search.run import run_search

        run_search(cfg)

    guarded(go)


if __name__ == "__main__":
    COMMAND.run(main)
