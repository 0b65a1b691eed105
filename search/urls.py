"""Study storage URLs: the schemes the tool opens, and a URL as it may be printed (never
with its password)."""

from __future__ import annotations

import re

__all__ = ["PASSWORD", "redact", "STORAGE_SCHEMES", "without_password"]

STORAGE_SCHEMES = ("sqlite:///", "journal:", "postgresql://", "postgresql+", "mysql://",
                   "mysql+")


PASSWORD = re.compile(r"(://[^:/@]+):[^@]*@")  # the password of USER:PASSWORD@HOST


def redact(url: str) -> str:
    """The storage URL with any password replaced by ***."""
    return PASSWORD.sub(r"\1:***@", url)


def without_password(url: str) -> str:
    """The storage URL with any password left out (the server then asks PGPASSWORD or
    ~/.pgpass)."""
    return PASSWORD.sub(r"\1@", url)
