"""The command line shared by every package's commands: Hydra apps over a dataclass schema,
with ``--help`` and "did you mean", and the Python interpreter to print in suggested
commands."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import shlex
import shutil
import sys
import textwrap
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["CliError", "HydraApp", "arg", "as_override", "closest", "group_options",
           "python_cmd", "settings", "shell_join"]


class CliError(ValueError):
    """A command line the command cannot take; the message says what to type instead."""


def closest(word: str, known: list[str] | set[str], n: int = 1) -> list[str]:
    """The known words nearest to ``word`` (for "did you mean"), best first."""
    known = sorted(known)
    found = difflib.get_close_matches(word, known, n=n, cutoff=0.6)
    if not found:  # a key typed without its group: search.ntrials -> n_trials
        tail = {k.rsplit(".", 1)[-1]: k for k in known}
        found = [tail[m] for m in difflib.get_close_matches(word.rsplit(".", 1)[-1], list(tail),
                                                            n=n, cutoff=0.75)]
    return found


def group_options(conf_dir: str | os.PathLike, group: str) -> list[str]:
    """The options of a config group: shipped (``CONF_DIR/GROUP``) and the user's
    (``./conf/GROUP``, where Hydra finds them too)."""
    found = set()
    for base in (Path(conf_dir) / group, Path.cwd() / "conf" / group):
        if base.is_dir():
            found.update(p.stem for p in base.glob("*.yaml"))
    return sorted(found)


def python_cmd() -> str:
    """How to start this Python from the user's shell: ``python`` where that name finds this
    interpreter (an activated virtual environment), else its path (relative to the working
    folder where it lies below it), so that a printed command works when typed as printed."""
    exe = Path(sys.executable)
    for name in ("python", "python3"):
        found = shutil.which(name)
        if found and _same_python(Path(found), exe):
            return name
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def _same_python(a: Path, b: Path) -> bool:
    # A venv's python is a symlink to the base interpreter: compare the venv folders too.
    return a.absolute().parent == b.absolute().parent or (
        a.resolve() == b.resolve() and sys.prefix == sys.base_prefix)


def shell_join(words: list[str]) -> str:
    """``words`` quoted for a POSIX shell, plain where no quoting is needed."""
    return " ".join(shlex.quote(w) for w in words)


def arg(default: Any = "???", help: str = "") -> Any:
    """A command's setting with its help line: a dataclass field whose default may be a list
    (copied per instance) or ``???`` (required: the command stops without it)."""
    meta = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def as_override(value: Any) -> str:
    """A value as an override types it: ``null``, ``[a,b]``, ``true``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return str(value)


def settings(schema: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every settable key of a dataclass schema, dotted, with its default (``???`` when
    required) and its help line."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(schema)
    comments = _field_comments(schema)
    for f in fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            rows += settings(kind, f"{prefix}{f.name}.")
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "???"
        rows.append((f"{prefix}{f.name}", default,
                     f.metadata.get("help") or comments.get(f.name, "")))
    return rows


def _field_comments(schema: type) -> dict[str, str]:
    """A dataclass's fields' comments: the one at the end of the field's line, else the lines
    just above it. They are the help of settings declared without :func:`arg`, so that the
    comment beside a default is its help."""
    import inspect
    import re

    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    found, above = {}, []
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        match = re.match(r"(\w+):[^#]*?(?:#\s*(.*))?$", text)
        if match and line.startswith("    ") and not line.startswith("     "):
            found[match.group(1)] = (match.group(2) or " ".join(above)).strip()
        above = []
    return found


def _quoting_hint(arg: str) -> str:
    key, _, value = arg.partition("=")
    return (f"cannot read the override {arg!r}: a value that holds characters Hydra's "
            "override syntax reserves (such as = ? , [ ] { } or spaces) must be quoted inside "
            f"the argument, e.g. '{key}=\"{value}\"' (single quotes for the shell, double "
            "quotes for Hydra)")


@dataclass
class HydraApp:
    """A command that is a Hydra app: ``key=value`` overrides in Hydra's syntax, composed onto
    a dataclass schema, with a ``--help`` of its own and the overrides checked before Hydra
    sees them (a mistyped key names the closest one, a value of the wrong type or one Hydra
    cannot parse says what to type). Hydra's own flags stay (``--cfg job``, ``--info``).

    Attributes:
        module: what follows ``python -m``.
        summary: what the command does, a few lines.
        schema: the dataclass of its settings (registered in Hydra's ``ConfigStore`` as
            ``module`` unless ``config_dir`` holds the primary config).
        examples: override lists shown by ``--help``.
        groups: config groups it takes (``group=option``) and their options.
        add_groups: the groups written with ``+`` (the configuration has none until added).
        usage_args: what the usage line shows (``+device=NAME model=PATH``); required
            settings are the schema's fields whose default is ``???``.
        config_dir: the folder of a YAML primary config (``config.yaml``), or None.
        searchpath: further folders Hydra finds config groups in.
        hidden: prefixes of settings ``--help`` leaves to their group's file.
        group_defaults: (group, option) composed before the command line, for the groups
            written without ``+`` when the primary config is the schema.
    """

    module: str
    summary: str
    schema: type
    examples: list[str] = field(default_factory=list)
    groups: dict[str, Callable[[], list[str]]] = field(default_factory=dict)
    add_groups: tuple[str, ...] = ()
    usage_args: str = ""
    config_dir: Optional[str] = None
    searchpath: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    group_defaults: tuple[tuple[str, str], ...] = ()

    def _register(self) -> None:
        """Store the schema and the primary config in Hydra's ``ConfigStore`` (again at each
        run: the search path holds the folders that exist where it runs)."""
        from hydra.core.config_store import ConfigStore

        if self.config_dir is not None:
            return
        store = ConfigStore.instance()
        store.store(name=f"{self.module}.schema", node=self.schema)
        store.store(name=self.module, node={
            "defaults": [f"{self.module}.schema",
                         *({group: option} for group, option in self.group_defaults),
                         "_self_",
                         {"override hydra/job_logging": "none"},
                         {"override hydra/hydra_logging": "none"}],
            "hydra": {"output_subdir": None, "run": {"dir": "."}, "job": {"chdir": False},
                      "searchpath": [f"file://{p}" for p in self.searchpath
                                     if Path(p).is_dir()]},
        })

    def usage(self) -> str:
        return f"usage: {python_cmd()} -m {self.module} {self.usage_args} [key=value ...]"

    def help(self) -> str:
        lines = [self.usage().replace("  ", " "), "", self.summary]
        if self.groups:
            lines += ["", "config groups (group=option):"]
            for group, options in self.groups.items():
                plus = "+" if group in self.add_groups else ""
                lines.append(f"  {plus}{group}: {', '.join(options())}")
        rows = [(k, v, h) for k, v, h in self.defaults()
                if not k.startswith(tuple(f"{g}." for g in self.hidden))]
        lines += ["", "settings (key=value) with their defaults:"]
        width = min(max(len(f"{k}={as_override(v)}") for k, v, _ in rows) + 2, 36)
        for key, value, text in rows:
            setting = f"{key}={as_override(value)}"
            label = setting if len(setting) + 2 <= width else ""
            if not text or not label:  # no help, or a long default: its help below it
                lines.append(f"  {setting}")
            for part in textwrap.wrap(text, width=max(40, 96 - width)):
                lines.append(f"  {label.ljust(width)}{part}")
                label = ""
        py = python_cmd()
        lines += ["", "examples:"] + [f"  {py} -m {self.module} {e}" for e in self.examples]
        lines += ["", "Lists are written [a,b]; a value with = ? , [ ] or spaces is quoted: "
                  "'key=\"a value\"'.", "The composed configuration: --cfg job. Hydra's "
                  "own flags: --hydra-help."]
        return "\n".join(lines)

    def defaults(self) -> list[tuple[str, Any, str]]:
        """Each setting, its default as this command composes it, and its help line."""
        rows = settings(self.schema)
        if self.config_dir is None:
            return rows
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        with initialize_config_dir(self.config_dir, version_base="1.3"):
            composed = OmegaConf.to_container(compose("config"), resolve=False,
                                              throw_on_missing=False)
        out = []
        for key, _, text in rows:
            value = composed
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            out.append((key, value, text))
        return out

    def check(self, argv: list[str]) -> list[str]:
        """The command line's overrides checked before Hydra composes them; returns them
        with ``+`` dropped from plain settings (``+key=value`` is ``key=value`` there).

        Raises:
            CliError: an override Hydra cannot parse (with the quoting that works), a list
                written without brackets, a key the schema does not have (with the closest
                one), a value of the wrong type, a config group option that does not exist
                (with the known ones) or a group written without its ``+``.
        """
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import OverrideParseException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        parser = OverridesParser.create()
        keys = [k for k, _, _ in settings(self.schema)]
        node = OmegaConf.structured(self.schema)
        out = []
        for i, arg in enumerate(argv):
            if "=" not in arg or arg.startswith("-"):
                flag_value = i > 0 and argv[i - 1].startswith("-")  # --cfg job, -cn NAME
                if not arg.startswith("-") and not flag_value:
                    raise CliError(f"{arg!r} is not key=value. {self.usage()} (--help lists "
                                   "the settings)")
                out.append(arg)
                continue
            try:
                override = parser.parse_overrides([arg])[0]
            except OverrideParseException:
                raise CliError(_quoting_hint(arg)) from None
            key = override.key_or_group
            if key.startswith("hydra") or override.is_delete():
                out.append(arg)
                continue
            if override.is_sweep_override() and "--multirun" not in argv and "-m" not in argv:
                raise CliError(f"{arg!r}: a list is written in brackets, {key}=["
                               f"{arg.partition('=')[2]}] (a comma-separated value without "
                               "them asks for a sweep, which needs --multirun)")
            if key in self.groups:
                self._check_group(key, override)
                out.append(arg)
                continue
            if key not in keys:
                near = closest(key, keys)
                raise CliError(f"unknown setting {key!r}"
                               + (f"; did you mean {near[0]}?" if near else "")
                               + f" (`{python_cmd()} -m {self.module} --help` lists the "
                               "settings)")
            try:
                OmegaConf.update(node, key, override.value(), merge=True)
            except OmegaConfBaseException as exc:
                raise CliError(f"bad configuration at {key}: {str(exc).splitlines()[0]}. "
                               "Check the type of its value "
                               f"(`{python_cmd()} -m {self.module} --help` shows each "
                               "setting's default)") from None
            out.append(arg[1:] if override.is_add() and self.config_dir is None else arg)
        return out

    def _check_group(self, group: str, override: Any) -> None:
        options = self.groups[group]()
        value = override.value()
        if isinstance(value, str) and value not in options:
            near = closest(value, options)
            what = "device" if group == "device" else f"{group} option"
            raise CliError(f"unknown {what} {value!r}"
                           + (f" (did you mean {near[0]}?)" if near else "")
                           + f"; known: {', '.join(options)}"
                           + (" (or profile your own: python -m latency_models.profile "
                              "--help)" if group == "device" else ""))
        if group in self.add_groups and not override.is_add():
            raise CliError(f"write +{group}={value}: the configuration has no {group} until "
                           "the command adds one (the + adds it)")

    def compose(self, argv: list[str]) -> Any:
        """The schema's dataclass composed from ``argv`` by Hydra's compose API (for tests
        and scripts; the command itself runs through :meth:`run`)."""
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        argv = self.check(argv)
        self._register()
        with initialize_config_dir(self.config_dir or str(Path.cwd()), version_base="1.3"):
            cfg = compose(self.config_name, overrides=argv)
        problem = self._missing(cfg)
        if problem:
            raise CliError(problem)
        return OmegaConf.to_object(cfg)

    def _missing(self, cfg: Any) -> str:
        """What a composed configuration lacks, in words ("" when nothing)."""
        from omegaconf import OmegaConf

        missing = sorted(OmegaConf.missing_keys(cfg))
        for group in self.add_groups:
            if any(k.split(".")[0] == group for k in missing):
                return (f"no {group} chosen: add +{group}=NAME to the command; known: "
                        f"{', '.join(self.groups[group]())}")
        if missing:
            return (f"missing {', '.join(f'{k}=' for k in missing)}. {self.usage()} (--help "
                    "lists the settings)")
        return ""

    @property
    def config_name(self) -> str:
        return "config" if self.config_dir else self.module

    def run(self, task: Callable[[Any], Optional[int]], argv: list[str] | None = None,
            *, typed: bool = True) -> int:
        """Answer ``--help``, check the overrides, then run ``task`` as a Hydra app on the
        composed configuration (the schema's dataclass when ``typed``, else Hydra's
        ``DictConfig``). Returns ``task``'s exit status (2 for a command line it cannot
        take)."""
        import hydra
        from omegaconf import OmegaConf

        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("--help", "-h", "help") for a in argv):
            try:
                print(self.help(), flush=True)
            except BrokenPipeError:  # `--help | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        if "--hydra-help" not in argv:
            try:
                argv = self.check(argv)
            except CliError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        self._register()
        status: dict[str, Optional[int]] = {}

        @hydra.main(version_base="1.3", config_path=self.config_dir,
                    config_name=self.config_name)
        def main(cfg: Any) -> None:
            if typed:
                problem = self._missing(cfg)
                if problem:
                    print(f"error: {problem}", file=sys.stderr)
                    status["rc"] = 2
                    return
                cfg = OmegaConf.to_object(cfg)
            try:
                status["rc"] = task(cfg)
            except BrokenPipeError:  # `... | head`: the reader stopped; nothing went wrong
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                status["rc"] = 0

        saved = sys.argv
        sys.argv = [self.module, *argv]
        try:
            main()
        finally:
            sys.argv = saved
        return status.get("rc") or 0
