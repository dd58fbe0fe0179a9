"""SQLAlchemy Core statements, compiled once into the SQL text psycopg runs.

The repositories build their statements with SQLAlchemy Core at import. Each one is wrapped
in a ``Statement``, which compiles it for the engine's dialect and schema mapping on first use
and keeps the SQL text and the values of its anonymous parameters on itself: nothing is
compiled per request, and the cache cannot hand one statement's SQL to another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, text

SchemaMap = Mapping[str | None, str]


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a transaction and its parameters."""

    statement: Statement
    params: Mapping[str, Any]


class Statement:
    """A Core statement and its compiled SQL, per schema mapping."""

    __slots__ = ("_compiled", "clause", "name")

    def __init__(self, name: str, clause: ClauseElement) -> None:
        self.name = name
        self.clause = clause
        self._compiled: dict[tuple[tuple[str, str], ...], tuple[str, dict[str, Any]]] = {}

    def compiled(self, dialect: Dialect, schema_map: SchemaMap) -> tuple[str, dict[str, Any]]:
        """The SQL text (schema names filled in) and the values of its anonymous parameters."""
        key = tuple(sorted((str(placeholder), schema) for placeholder, schema in schema_map.items()))
        if (cached := self._compiled.get(key)) is None:
            compiled = self.clause.compile(
                dialect=dialect, schema_translate_map=dict(schema_map), render_schema_translate=True
            )
            literals = {name: value for name, value in compiled.params.items() if value is not None}
            cached = self._compiled[key] = (str(compiled), literals)
        return cached

    def __repr__(self) -> str:
        return f"Statement({self.name!r})"


class TextStatement(Statement):
    """A statement written as SQL text, for what Core would make harder to read (a recursive walk).

    ``{orders}`` and ``{catalog}`` name the schemas (filled in from the schema mapping, quoted);
    parameters are psycopg's ``%(name)s``, cast in the text.
    """

    __slots__ = ("template",)

    def __init__(self, name: str, template: str) -> None:
        super().__init__(name, text(template))
        self.template = template

    def compiled(self, dialect: Dialect, schema_map: SchemaMap) -> tuple[str, dict[str, Any]]:
        key = tuple(sorted((str(placeholder), schema) for placeholder, schema in schema_map.items()))
        if (cached := self._compiled.get(key)) is None:
            quote = dialect.identifier_preparer.quote_schema
            names = {placeholder: quote(schema) for placeholder, schema in schema_map.items() if placeholder}
            cached = self._compiled[key] = (self.template.format(**names), {})
        return cached
