"""Run every data-driven bad-input case and print its row for tests/BAD_INPUTS.md.

    python scripts/bad_inputs_table.py > /tmp/rows.md

Each row: the case, the command's exit code and the first line of what the user sees.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import run_cli  # noqa: E402
from tests.test_bad_inputs import CASES  # noqa: E402


def first_message(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:") or "Could not" in ln or "Error" in ln:
            return ln
    return lines[-1] if lines else ""


def main() -> int:
    for i, case in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            case.setup(t)
            result = run_cli(*case.argv(t), cwd=t if case.cwd_is_tmp else None)
            msg = first_message(result.stdout + result.stderr).replace(tmp, "TMP")
            msg = msg.replace("|", "\\|")
            if len(msg) > 220:
                msg = msg[:217] + "..."
            print(f"| {i} | {case.id.split('-')[0]} | {case.id} | exit {result.returncode}: "
                  f"{msg} | `tests/test_bad_inputs.py::test_bad_input[{case.id}]` |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
