"""Errors raised for bad user data, always naming where the problem is.

A :class:`DataError` message starts with the location, then the field, then what was wrong::

    data/hh.jsonl:17: field 'chosen': expected a string, got null  # jsonl: 1-based line
    data/hh.json: record 3: field 'summaries[1].text': missing     # json/parquet: 0-based index

so a user can open the file at the right place. It subclasses ``ValueError`` so callers that
already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["DataError", "Where", "type_name"]


def _location(file: str | None, line: int | None, record: int | None) -> str:
    if file is None:
        return ""
    if line is not None:
        return f"{file}:{line}: "
    if record is not None:
        return f"{file}: record {record}: "
    return f"{file}: "


class DataError(ValueError):
    """Bad user data. ``str(err)`` reads ``FILE[:LINE | : record I]: [field 'F': ]REASON``.

    The parts are also kept as attributes (``file``, ``line``, ``record``, ``field``, ``reason``)
    for programs that want to report them differently.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
    ):
        self.reason = reason
        self.file = file
        self.line = line
        self.record = record
        self.field = field
        prefix = _location(file, line, record)
        if field is not None:
            prefix += f"field {field!r}: "
        super().__init__(prefix + reason)


@dataclasses.dataclass(frozen=True)
class Where:
    """Where one record came from: a file and either a 1-based line (jsonl) or a 0-based
    record index (json list, parquet row)."""

    file: str
    line: int | None = None
    record: int | None = None

    def error(self, reason: str, field: str | None = None) -> DataError:
        """A :class:`DataError` at this location (return it, then ``raise``)."""
        return DataError(reason, file=self.file, line=self.line, record=self.record, field=field)

    def __str__(self) -> str:
        return _location(self.file, self.line, self.record).rstrip(": ")


def type_name(value: Any) -> str:
    """JSON-flavoured name of a value's type, for 'expected X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
