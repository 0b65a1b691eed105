"""python -m search +device=NAME [overrides]: run (or resume) the architecture search."""

import hydra
from omegaconf import DictConfig

from search.config import load
from search.errors import guarded, silence_library_warnings


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dc: DictConfig) -> None:
    def go() -> None:
        cfg = load(dc)  # config errors are reported before the heavy imports
        from search.run import run_search

        run_search(cfg)

    guarded(go)


if __name__ == "__main__":
    silence_library_warnings()
    main()
