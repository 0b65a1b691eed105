"""python -m search +device=NAME [overrides]: run (or resume) the architecture search."""

import hydra
from omegaconf import DictConfig

from search.config import load
from search.errors import guarded, silence_library_warnings


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dc: DictConfig) -> None:
    from search.run import run_search

    guarded(lambda: run_search(load(dc)))


if __name__ == "__main__":
    silence_library_warnings()
    main()
