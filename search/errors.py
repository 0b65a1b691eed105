"""User-facing errors: one clear paragraph and a non-zero exit, never a deep traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

__all__ = ["debug_enabled", "guarded", "Interrupted", "interrupted", "report_and_exit",
           "silence_library_warnings", "UserError"]


class UserError(Exception):
    """Something the user can fix; the message says what was wrong and how to fix it."""


def silence_library_warnings() -> None:
    """Hide libraries' notes that users cannot act on (Optuna's experimental-feature notes,
    deprecation and tracer warnings); errors still surface as :class:`UserError`."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return os.environ.get("EDGENAS_DEBUG") == "1" or "debug=true" in argv or "--debug" in argv


def report_and_exit(exc: BaseException, code: int = 2) -> None:
    """Print ``exc`` as a one-paragraph error (with the traceback only in debug mode)."""
    if debug_enabled():
        import traceback

        traceback.print_exception(exc)
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(code)


def guarded(fn: Callable[[], object]) -> object:
    """Run ``fn``; turn a UserError (and known library errors) into a clean exit."""
    from latency_models.model import DeviceModelError
    from latency_models.ops import UnknownOpError
    from latency_models.sources import MeasurementError
    from spaces.arch import ArchError
    from spaces.space import SpaceError

    try:
        return fn()
    except (UserError, DeviceModelError, UnknownOpError, MeasurementError, ArchError,
            SpaceError) as exc:
        report_and_exit(exc)
    except KeyboardInterrupt as exc:
        interrupted(exc)
    except Exception as exc:
        # Ctrl-C landing inside a library's clean-up can surface as another exception
        # raised while handling the KeyboardInterrupt.
        if _caused_by_interrupt(exc):
            interrupted()
        raise


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with the line that says what was interrupted and how to resume."""


def interrupted(exc: BaseException | None = None) -> None:
    if isinstance(exc, Interrupted):
        print(str(exc), file=sys.stderr)
    else:
        print("interrupted: the study keeps every finished trial; run the same command to "
              "resume", file=sys.stderr)
    sys.exit(130)


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__ or exc.__cause__
    return False
