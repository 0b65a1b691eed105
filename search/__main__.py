"""python -m search +device=NAME [overrides]: run (or resume) the architecture search."""

import warnings

import hydra
from omegaconf import DictConfig

from search.config import load
from search.errors import guarded


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dc: DictConfig) -> None:
    from search.run import run_search

    guarded(lambda: run_search(load(dc)))


if __name__ == "__main__":
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeat, retry
    warnings.filterwarnings("ignore", category=UserWarning)
    main()
