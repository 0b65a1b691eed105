"""Command-line helpers shared by every package's commands: ``key=value`` arguments with
``--help`` and "did you mean", and the Python interpreter to print in suggested commands."""

from __future__ import annotations

import difflib
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Command", "CliError", "closest", "python_cmd", "shell_join"]


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


@dataclass
class Command:
    """A helper command that takes ``key=value`` arguments (``+key=value`` is the same).

    Attributes:
        module: what follows ``python -m``.
        summary: one or two lines on what it does.
        keys: each argument's name and a short description (with its default).
        examples: command lines shown by ``--help`` (without ``python -m MODULE``).
        required: arguments that must be given.
        usage_args: the usage line's arguments, where the required ones alone would mislead.
    """

    module: str
    summary: str
    keys: dict[str, str]
    examples: list[str] = field(default_factory=list)
    required: tuple[str, ...] = ()
    usage_args: str = ""  # the usage line's arguments (default: the required ones)

    def usage(self) -> str:
        req = self.usage_args or " ".join(f"{k}={k.upper()}" for k in self.required)
        return f"usage: python -m {self.module} {req} [key=value ...]".replace("  ", " ")

    def help(self) -> str:
        width = max(len(k) for k in self.keys) + 2
        lines = [self.usage(), "", self.summary, "", "arguments:"]
        lines += [f"  {k.ljust(width)}{v}" for k, v in self.keys.items()]
        if self.examples:
            lines += ["", "examples:"]
            lines += [f"  python -m {self.module} {e}" for e in self.examples]
        return "\n".join(lines)

    def parse(self, argv: list[str]) -> dict[str, str]:
        """The arguments as a dict; prints the help and exits 0 on ``--help`` or ``-h``.

        Raises:
            CliError: an argument without ``=``, an unknown key (naming the closest known
                one) or a missing required one.
        """
        if any(a in ("--help", "-h", "help") for a in argv):
            print(self.help())
            raise SystemExit(0)
        args, problems = {}, []
        for a in argv:
            key, eq, value = a.lstrip("+").partition("=")
            if not eq:
                problems.append(f"{a!r} is not key=value")
            elif key not in self.keys:
                near = closest(key, self.keys)
                problems.append(f"unknown argument {key!r}"
                                + (f" (did you mean {near[0]}=?)" if near else ""))
            else:
                args[key] = value
        missing = [k for k in self.required if k not in args]
        if missing:
            problems.append("missing " + ", ".join(f"{k}=" for k in missing))
        if problems:
            raise CliError(f"{'; '.join(problems)}. {self.usage()} (--help lists the "
                           "arguments)")
        return args
