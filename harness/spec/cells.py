"""Cell ids, DATASET/TEACHER-STUDENT/METHOD, and the names inside them."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class Cell:
    dataset: str
    pair: str
    method: str

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.pair}/{self.method}"

    def __str__(self) -> str:
        return self.id


def method_parts(method: str) -> list[str]:
    """A method id may join registered methods with '+': 'kd+nst_poly'."""
    parts = method.split("+")
    if not all(parts):
        raise UserError(f"method {method!r} is malformed: join method names with single '+'")
    if len(set(parts)) != len(parts):
        raise UserError(f"method {method!r} names a method twice")
    return parts


def split_assignment(flag: str, item: str, method_id: str, form: str) -> tuple[str, str, str]:
    """`[METHOD.]NAME=VALUE` as (method, name, value text); a bare NAME needs a single-method id."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise UserError(f"{flag} {item!r}: expected {form}")
    method, _, key = name.rpartition(".")
    if not method:
        parts = method_parts(method_id)
        if len(parts) > 1:
            raise UserError(f"{flag} {item!r}: {method_id!r} combines methods; write METHOD.{name}=...")
        method = parts[0]
    return method, key, value


def require_known(name: str, table: dict, what: str) -> None:
    if name in table:
        return
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(table))}"
    raise UserError(f"unknown {what} {name!r}{hint}")
