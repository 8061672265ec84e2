"""WikiSQL: SQL text <-> WikiSQL's structured query, logical-form and execution accuracy.

Text form (the mlx-examples LoRA format, checked against `wikisql/mlx_lora_subset`):

    SELECT [AGG ]<column name> FROM <table id>[ WHERE <column name> <op> <value>[ AND ...]]

Column names are written verbatim (unquoted), string values in single quotes (not escaped,
as mlx does), numbers bare (Python's str of the JSON number). Because names and values are not
escaped, `parse_sql` is header-aware: it matches the table's column names and backtracks over
quote / AND positions, so every gold query of the test split parses back to its structure
(tests/tasks/test_task_wikisql.py and test_task_realdata.py check this on the fixtures and on
all 15,878 real test queries).

Logical-form accuracy (the paper's metric), exactly as the official evaluator compares queries
(salesforce/WikiSQL `lib/query.py`, `Query.__eq__`, unordered conditions): same select column, same
aggregation, and the same SET of (column, operator, `str(value).lower()`) conditions. Nothing else
is normalised: `'new  york'` is not `'new york'`, and `2006.0` is not `2006` (our parser reads a bare
number as Python's int or float, so `2006` and `'2006'` both give "2006", as the official JSON would).

Execution accuracy (not reported by the paper): gold and predicted query run on the table in an
in-memory sqlite database, built like the official DBEngine (text lower-cased, `real` columns
numeric, condition values lower-cased / converted to numbers for real columns); the result lists
must be equal. Tables with rows flagged ambiguous (rebuilt-CSV caveat in the data README) are
excluded from it and counted. Unparseable output is wrong for both metrics, logged, never raised.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)

AGG_OPS = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")
COND_OPS = ("=", ">", "<", "OP")

_SELECT = re.compile(r"\s*SELECT\s+", re.IGNORECASE)
_FROM = re.compile(r"\s+FROM\s+\S+", re.IGNORECASE)
_WHERE = re.compile(r"\s+WHERE\s+", re.IGNORECASE)
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)
_OP = re.compile(r"\s*(=|>|<)\s*|\s+(OP)\s+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


# ----------------------------------------------------------------------------- render


def render_value(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def render_sql(sql: Mapping[str, Any], header: Sequence[str], table_id: str) -> str:
    """WikiSQL's {sel, agg, conds} as SQL text with column names."""
    agg = AGG_OPS[sql["agg"]]
    text = f"SELECT {agg + ' ' if agg else ''}{header[sql['sel']]} FROM {table_id}"
    conds = [f"{header[col]} {COND_OPS[op]} {render_value(value)}" for col, op, value in sql["conds"]]
    return text + (" WHERE " + " AND ".join(conds) if conds else "")


# ----------------------------------------------------------------------------- parse


def parse_sql(text: str, header: Sequence[str]) -> dict[str, Any] | None:
    """SQL text back to {sel, agg, conds}, or None when it is not a query over this header."""
    text = text.strip().rstrip(";").rstrip()
    start = _SELECT.match(text)
    if start is None:
        return None
    body = text[start.end():]
    for agg, column_start in _aggregation_candidates(body):
        for sel, end in _columns_at(body, column_start, header):
            source = _FROM.match(body, end)
            if source is None:
                continue
            if source.end() == len(body):
                return {"sel": sel, "agg": agg, "conds": []}
            where = _WHERE.match(body, source.end())
            conds = _parse_conditions(body, where.end(), header) if where else None
            if conds is not None:
                return {"sel": sel, "agg": agg, "conds": conds}
    return None


def _aggregation_candidates(body: str) -> list[tuple[int, int]]:
    """(agg index, where the column starts); an aggregation keyword is tried before none."""
    found = [(index, len(keyword) + 1) for index, keyword in enumerate(AGG_OPS)
             if keyword and body[:len(keyword) + 1].upper() == keyword + " "]
    return found + [(0, 0)]


def _columns_at(text: str, pos: int, header: Sequence[str]) -> list[tuple[int, int]]:
    """(column index, end) of every header name found at `pos`, longest first, case-insensitive."""
    lowered = text.lower()
    hits = [(index, pos + len(name)) for index, name in enumerate(header)
            if name and lowered.startswith(name.lower(), pos)]
    return sorted(hits, key=lambda hit: hit[1] - pos, reverse=True)


def _parse_conditions(text: str, pos: int, header: Sequence[str]) -> list[list[Any]] | None:
    """Conditions from `pos` to the end of `text`, backtracking over ambiguous boundaries."""
    for col, end in _columns_at(text, pos, header):
        op = _OP.match(text, end)
        if op is None:
            continue
        for value_end, value in _value_candidates(text, op.end()):
            condition = [col, COND_OPS.index(op.group(1) or op.group(2)), value]
            if value_end == len(text):
                return [condition]
            conjunction = _AND.match(text, value_end)
            rest = _parse_conditions(text, conjunction.end(), header) if conjunction else None
            if rest is not None:
                return [condition, *rest]
    return None


def _value_candidates(text: str, pos: int):
    """Possible (end, value) for a value starting at `pos`, shortest first."""
    if pos < len(text) and text[pos] in "'\"":
        quote = text[pos]
        for end in (i for i in range(pos + 1, len(text)) if text[i] == quote):
            yield end + 1, text[pos + 1:end]
        return
    ends = [match.start() for match in _AND.finditer(text, pos)] + [len(text)]
    for end in ends:
        raw = text[pos:end].strip()
        if raw:
            yield end, _as_number(raw)


def _as_number(raw: str) -> Any:
    for cast in (int, float):
        try:
            number = cast(raw)
        except ValueError:
            continue
        return number if math.isfinite(number) else raw  # 'nan' / 'inf' are cell texts here
    return raw


# ----------------------------------------------------------------------------- logical form


def normalise_value(value: Any) -> str:
    """A condition value as the official `Query.__eq__` compares it: `str(value).lower()`."""
    return str(value).lower()


def logical_form(sql: Mapping[str, Any]) -> tuple[int, int, frozenset]:
    conds = frozenset((int(col), int(op), normalise_value(value)) for col, op, value in sql["conds"])
    return int(sql["sel"]), int(sql["agg"]), conds


def same_logical_form(predicted: Mapping[str, Any] | None, gold: Mapping[str, Any]) -> bool:
    return predicted is not None and logical_form(predicted) == logical_form(gold)


# ----------------------------------------------------------------------------- execution


def _to_number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        found = _NUMBER.search(text)
        return float(found.group()) if found else None


class TableDatabase:
    """WikiSQL tables in one in-memory sqlite database, loaded on first use."""

    def __init__(self) -> None:
        self.connection = sqlite3.connect(":memory:")
        self._names: dict[str, str] = {}

    def _table_name(self, table: Mapping[str, Any]) -> str:
        if table["id"] not in self._names:
            name = f"t{len(self._names)}"
            types = table.get("types") or ["text"] * len(table["header"])
            columns = ", ".join(f"col{i} {'REAL' if kind == 'real' else 'TEXT'}" for i, kind in enumerate(types))
            self.connection.execute(f"CREATE TABLE {name} ({columns})")
            cells = [[self._cell(cell, types[i]) for i, cell in enumerate(row)] for row in table["rows"]]
            marks = ", ".join("?" * len(types))
            self.connection.executemany(f"INSERT INTO {name} VALUES ({marks})", cells)
            self._names[table["id"]] = name
        return self._names[table["id"]]

    @staticmethod
    def _cell(cell: Any, kind: str) -> Any:
        number = _to_number(cell) if kind == "real" and str(cell).replace(",", "").strip() else None
        return number if number is not None else str(cell).lower()

    def execute(self, table: Mapping[str, Any], sql: Mapping[str, Any]) -> list[Any]:
        name = self._table_name(table)
        types = table.get("types") or ["text"] * len(table["header"])
        agg = AGG_OPS[sql["agg"]]
        select = f"{agg}(col{sql['sel']})" if agg else f"col{sql['sel']}"
        clauses, params = [], []
        for col, op, value in sql["conds"]:
            if COND_OPS[op] == "OP":
                raise sqlite3.OperationalError("operator OP has no SQL meaning")
            clauses.append(f"col{col} {COND_OPS[op]} ?")
            params.append(self._condition_value(value, types[col]))
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return [row[0] for row in self.connection.execute(f"SELECT {select} FROM {name}{where}", params)]

    @staticmethod
    def _condition_value(value: Any, kind: str) -> Any:
        if kind == "real":
            number = _to_number(value)
            return number if number is not None else str(value).lower()
        return value.lower() if isinstance(value, str) else value


# ----------------------------------------------------------------------------- scoring


@dataclass
class WikiSQLScores:
    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)


def score_wikisql(predictions: Sequence[str | None], examples: Sequence[Mapping[str, Any]]) -> WikiSQLScores:
    """Score SQL texts against examples {sql, table: {id, header, types, rows, ambiguous_rows} | None}.

    A prediction of None means the example could not be prompted (no header): it counts as wrong.
    """
    database = TableDatabase()
    counts = {"examples": len(examples), "unparseable": 0, "missing_header": 0, "ex_evaluated": 0,
              "ex_excluded_ambiguous_rows": 0, "ex_no_rows": 0, "ex_gold_errors": 0}
    lf_correct = ex_correct = 0
    rows = []
    for text, example in zip(predictions, examples, strict=True):
        table, gold = example.get("table"), example["sql"]
        if table is None or text is None:
            counts["missing_header"] += 1
            rows.append({"parsed": None, "lf_correct": False, "ex_correct": None})
            continue
        parsed = parse_sql(text, table["header"])
        if parsed is None:
            counts["unparseable"] += 1
            log.debug("wikisql: unparseable output %r (table %s)", text, table["id"])
        lf_ok = same_logical_form(parsed, gold)
        ex_ok = _execution_match(database, table, parsed, gold, counts)
        lf_correct += lf_ok
        ex_correct += bool(ex_ok)
        rows.append({"parsed": parsed, "lf_correct": lf_ok, "ex_correct": ex_ok})
    if counts["unparseable"]:  # each one is in the predictions file, "parsed": null
        log.info("wikisql: %d of %d outputs are not SQL of the table's columns; scored wrong",
                 counts["unparseable"], len(examples))
    metrics = {"lf_accuracy": lf_correct / len(examples) if examples else 0.0}
    if counts["ex_evaluated"]:
        metrics["ex_accuracy"] = ex_correct / counts["ex_evaluated"]
    return WikiSQLScores(metrics=metrics, rows=rows, notes=counts)


def _execution_match(database: TableDatabase, table: Mapping[str, Any], parsed: Mapping[str, Any] | None,
                     gold: Mapping[str, Any], counts: dict[str, int]) -> bool | None:
    """True/False when execution accuracy applies to this example, None when it is excluded."""
    if not table.get("rows"):
        counts["ex_no_rows"] += 1
        return None
    if table.get("ambiguous_rows"):
        counts["ex_excluded_ambiguous_rows"] += 1
        return None
    try:
        expected = database.execute(table, gold)
    except sqlite3.Error:
        counts["ex_gold_errors"] += 1
        return None
    counts["ex_evaluated"] += 1
    if parsed is None:
        return False
    try:
        return database.execute(table, parsed) == expected
    except (sqlite3.Error, IndexError):
        return False
