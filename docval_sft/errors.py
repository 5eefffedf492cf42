"""User-facing errors and the per-record issues the validator collects.

A :class:`DocvalError` is a problem the user can fix (bad file, bad flag); the CLI prints its message on one
line and exits with code 2, without a traceback unless ``--debug`` is given. Every message names *where*
(file, record, line, field) and *what to do*.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


class DocvalError(Exception):
    """An error caused by the user's input or configuration; printed as one line, exit code 2."""


@dataclass(frozen=True)
class Location:
    """Where a record lives: file, 0-based index, 1-based line (JSON Lines only) and its image_id."""

    file: Path
    index: int
    line: int | None = None
    image_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: record {self.index}"
        if self.line is not None:
            where += f" (line {self.line})"
        if self.image_id:
            where += f" [image_id={self.image_id}]"
        return where


@dataclass(frozen=True)
class Issue:
    """One problem found in one record. ``code`` is stable (for --json and tests); ``message`` is for humans."""

    location: Location
    field: str | None
    code: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        field = f" field '{self.field}':" if self.field else ""
        return f"{self.location}:{field} {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": str(self.location.file),
            "index": self.location.index,
            "line": self.location.line,
            "image_id": self.location.image_id,
            "field": self.field,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "text": str(self),
        }


class IssueList:
    """Mixin for results that carry ``issues``: their errors and warnings."""

    issues: list[Issue]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]
