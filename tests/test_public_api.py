"""Each module declares its public names (``__all__``); the packages, scripts and tests
import only those from one another: never a private (``_name``) or undeclared one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "spaces", "latency_models")


def declared(module: str) -> set[str] | None:
    """The ``__all__`` of one of our modules, read from its source (None: a package)."""
    path = ROOT / Path(*module.split("."))
    if path.is_dir():
        return None
    tree = ast.parse(path.with_suffix(".py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def modules() -> list[Path]:
    found = [p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")]
    return sorted(found)


ENTRY = ("__init__.py", "__main__.py")  # a package's marker and its command, not a module


@pytest.mark.parametrize("path", [p for p in modules() if p.name not in ENTRY],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_module_declares_its_public_names(path):
    names = declared(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert names, f"{path} has no __all__"
    tree = ast.parse(path.read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    defined |= {n.target.id for n in tree.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                for a in n.names}
    assert names <= defined | imported, f"{path}: __all__ names {names - defined - imported}"
    assert not [n for n in names if n.startswith("_")]


@pytest.mark.parametrize("path", [p for p in modules() if p.name in ENTRY],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_package_markers_define_nothing_and_commands_run_as_main(path):
    """A package's ``__init__`` defines no functions or classes (its code lives in modules
    that declare it); a ``__main__`` runs its command when executed."""
    tree = ast.parse(path.read_text())
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    if path.name == "__init__.py":
        assert not defs, f"{path}: define {defs} in a module of the package"
    else:
        guards = [n for n in tree.body if isinstance(n, ast.If)
                  and "__main__" in ast.unparse(n.test)]
        assert guards, f"{path} does nothing when run (no `if __name__ == \"__main__\":`)"


def test_modules_import_only_what_another_declares():
    files = modules() + sorted((ROOT / "scripts").glob("*.py")) + sorted(
        (ROOT / "tests").glob("*.py"))
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                continue
            if node.module.split(".")[0] not in PACKAGES:
                continue
            names = declared(node.module)
            if names is None:  # from a package: its modules
                continue
            for alias in node.names:
                if alias.name.startswith("_") or alias.name not in names:
                    wrong.append(f"{path.relative_to(ROOT)}: {node.module}.{alias.name}")
    assert not wrong, "imports of names a module does not declare public:\n" + "\n".join(wrong)
