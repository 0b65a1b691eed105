"""The Hydra commands' edge: ``--help``, overrides checked before Hydra sees them (a typo names
the closest key, a value Hydra cannot parse shows its quoting), and the commands they print.

Hydra's own flags stay available (``--cfg job``, ``--hydra-help``, ``--multirun``).
"""

from __future__ import annotations

import sys
from typing import Callable

from search.config import CONF_DIR, Config, group_options, without_password
from search.errors import UserError, report_and_exit, silence_library_warnings
from spaces.cli import closest, python_cmd, shell_join

__all__ = ["HydraCommand", "check_overrides", "known_keys", "suggested_command"]

GROUPS = ("device", "space", "data", "proxy", "storage", "search")


def known_keys() -> list[str]:
    """Every settable key of the configuration, dotted (``search.n_trials``)."""
    from omegaconf import OmegaConf

    keys: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for key, child in node.items():
            if isinstance(child, dict):
                walk(child, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")

    walk(OmegaConf.to_container(OmegaConf.structured(Config)), "")
    return keys


def _quoting_hint(arg: str) -> str:
    key, _, value = arg.partition("=")
    return (f"cannot read the override {arg!r}: a value that holds characters Hydra's "
            "override syntax reserves (such as = ? , [ ] { } or spaces) must be quoted inside "
            f"the argument, e.g. '{key}=\"{value}\"' (single quotes for the shell, double "
            "quotes for Hydra)")


def check_overrides(argv: list[str]) -> None:
    """Check the command line's overrides before Hydra composes them.

    Raises:
        UserError: an override Hydra cannot parse (with the quoting that works), a key that
            is not in the configuration (with the closest one), a config group option that
            does not exist (with the known ones), or ``device=`` without its ``+``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    keys = None
    for arg in args:
        try:
            override = parser.parse_overrides([arg])[0]
        except OverrideParseException:
            raise UserError(_quoting_hint(arg)) from None
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete():
            continue
        if key in GROUPS:
            options = group_options(key)
            value = override.value()
            if isinstance(value, str) and value not in options:
                near = closest(value, options)
                what = "device" if key == "device" else f"{key} option"
                raise UserError(f"unknown {what} {value!r}"
                                + (f" (did you mean {near[0]}?)" if near else "")
                                + f"; known: {', '.join(options)}"
                                + (" (or profile your own: python -m "
                                   "latency_models.profile --help)" if key == "device" else ""))
            if key == "device" and not override.is_add():
                raise UserError(f"write +device={value}: the configuration has no device until "
                                "the command adds one (the + adds it)")
            continue
        keys = keys if keys is not None else known_keys()
        if key not in keys:
            near = closest(key, keys)
            raise UserError(f"unknown setting {key!r}"
                            + (f"; did you mean {near[0]}?" if near else "")
                            + f" (`{python_cmd()} -m search --help` lists the settings)")


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


def _as_override(value: object) -> str:
    """A default as it is typed in an override: ``null``, ``[a,b]``, ``true``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_as_override(v) for v in value) + "]"
    return str(value)


class HydraCommand:
    """A Hydra app's command line: ``--help`` of our own, overrides checked first.

    Attributes:
        module: what follows ``python -m``.
        summary: what the command does, a few lines.
        examples: override lists shown by ``--help``.
    """

    def __init__(self, module: str, summary: str, examples: list[str]) -> None:
        self.module, self.summary, self.examples = module, summary, examples

    def help(self) -> str:
        from omegaconf import OmegaConf

        py = python_cmd()
        lines = [f"usage: {py} -m {self.module} +device=NAME [key=value ...]", "",
                 self.summary, "", "config groups (group=option):"]
        for group in GROUPS:
            prefix = "+" if group == "device" else ""
            lines.append(f"  {prefix}{group}: {', '.join(group_options(group))}")
        lines += ["", "settings (key=value) with their defaults:"]
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            composed = OmegaConf.to_container(
                OmegaConf.merge(OmegaConf.structured(Config), compose("config")),
                resolve=False, throw_on_missing=False)
        for key in known_keys():
            if key.startswith(("device.", "space.")):
                continue  # set by their group's file
            value = composed
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            lines.append(f"  {key}={_as_override(value)}")
        lines += ["", "examples:"] + [f"  {py} -m {self.module} {e}" for e in self.examples]
        lines += ["", f"The whole composed configuration: {py} -m {self.module} +device=rpi4 "
                  "--cfg job", "Hydra's own flags: --hydra-help. Tracebacks: debug=true."]
        return "\n".join(lines)

    def run(self, main: Callable[[], None], argv: list[str] | None = None) -> None:
        """Answer ``--help``, check the overrides, then call Hydra's ``main``."""
        argv = sys.argv[1:] if argv is None else argv
        if "--help" in argv or "-h" in argv:
            print(self.help())
            raise SystemExit(0)
        silence_library_warnings()
        if "--hydra-help" not in argv:
            try:
                check_overrides(argv)
            except UserError as exc:
                report_and_exit(exc)
        main()
