"""The Hydra commands' edge: ``--help``, overrides checked before Hydra sees them (a typo names
the closest key, a value Hydra cannot parse shows its quoting), and the commands they print.

Hydra's own flags stay available (``--cfg job``, ``--hydra-help``, ``--multirun``).
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig

from search.config import CONF_DIR, Config, group_options
from search.errors import guarded, silence_library_warnings
from search.urls import without_password
from spaces.cli import HydraApp, python_cmd, settings, shell_join

__all__ = ["HydraCommand", "known_keys", "search_app", "suggested_command"]

GROUPS = ("device", "space", "data", "proxy", "storage", "search")


def known_keys() -> list[str]:
    """Every settable key of the configuration, dotted (``search.n_trials``)."""
    return [key for key, _, _ in settings(Config)]


def suggested_command(module: str, *extra: str) -> str:
    """``python -m MODULE`` with this run's overrides (but ``select`` and ``out``) and
    ``extra``, quoted so that it works pasted into a shell."""
    words = [python_cmd(), "-m", module]
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra app (tests calling the functions directly)
        task = []
    hidden = False
    for arg in task:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key in ("select", "out"):
            continue
        if key == "storage.url" and without_password(arg) != arg:  # never print a password
            arg, hidden = without_password(arg), True
        words.append(_requote(arg))
    return shell_join(words + list(extra)) + (
        "   # with PGPASSWORD set (the password is not printed)" if hidden else "")


def _requote(arg: str) -> str:
    """An override as Hydra must read it again: a value Hydra would not parse as given
    (e.g. a URL with ? or =) gets Hydra's quotes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([arg])
        return arg
    except OverrideParseException:
        key, _, value = arg.partition("=")
        return f'{key}="{value}"'


def search_app(module: str, summary: str = "", examples: list[str] | None = None) -> HydraApp:
    """A command on the search's configuration (``conf/config.yaml`` onto
    :class:`search.config.Config`): ``search``, ``search.export``, ``search.report``."""
    return HydraApp(
        module=module, summary=summary, schema=Config, examples=examples or [],
        groups={g: (lambda g=g: group_options(g)) for g in GROUPS}, add_groups=("device",),
        usage_args="+device=NAME", config_dir=str(CONF_DIR), hidden=("device", "space"))


class HydraCommand:
    """A command on the search's configuration: ``--help`` of its own, overrides checked
    first, then ``task`` on Hydra's composed ``DictConfig`` (which :func:`search.config.load`
    validates), with known errors reported in one paragraph.

    Attributes:
        module: what follows ``python -m``.
        summary: what the command does, a few lines.
        examples: override lists shown by ``--help``.
    """

    def __init__(self, module: str, summary: str, examples: list[str]) -> None:
        self.module, self.summary, self.examples = module, summary, examples
        self.app = search_app(module, summary, examples)

    def help(self) -> str:
        return self.app.help()

    def run(self, task: Callable[[DictConfig], None], argv: list[str] | None = None) -> None:
        """Run ``task`` as this Hydra app; exits with its status."""
        silence_library_warnings()
        raise SystemExit(self.app.run(lambda dc: guarded(lambda: task(dc)), argv,
                                      typed=False))
