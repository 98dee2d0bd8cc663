"""SQL dumps and SQLite databases -> one Record per table row, holding the row's text values.

A dump (.sql) is read as a stream of tokens, so a dump of many gigabytes is never loaded whole:
the string literals of each INSERT ... VALUES (...), (...) row become that row's text, minus
the strings that are data rather than words (numbers, dates, uuids, hex blobs, short codes).
A SQLite database is queried directly, read-only: the text columns of every table.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import takewhile
from pathlib import Path

from ..record import ReaderOptions, Record, SkipFile
from .tabular import open_text

# --- SQL dumps -----------------------------------------------------------------------------------

# One token of SQL. Quotes and comments may span lines; when the text read so far ends inside one,
# no alternative matches and the tokenizer reads more lines (see _tokens).
_TOKEN = re.compile(r"""
    (?P<string>  '(?:[^'\\]|\\.|'')*'(?!') )      # 'it''s' or 'it\'s'; (?!') so a '' is never split
  | (?P<name>    "(?:[^"]|"")*"(?!") | `[^`]*` | \[[^\]]*\] )   # quoted names: "a", `a`, [a]
  | (?P<comment> --[^\n]* | /\*.*?\*/ )
  | (?P<space>   \s+ )
  | (?P<word>    [^\s'"`\[\](),;\-/]+ )           # keywords, names, numbers
  | (?P<punct>   [(),;\]] | -(?!-) | /(?!\*) )
""", re.VERBOSE | re.DOTALL)

# Backslash escapes as MySQL writes them. Standard SQL (SQLite, PostgreSQL) has no backslash
# escapes, so any other backslash is kept as it is: 'Act \ Intermezzo' stays intact.
_BACKSLASH_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"''|\\(.)", re.DOTALL)

MIN_TEXT_CHARS = 4
_NOT_WORDS = re.compile(r"""
    [+-]?\d[\d\s.,:+\-/TZ]*                                           # numbers, dates, times
  | [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}      # uuids
  | (?:0x)?[0-9a-f]{16,}                                              # hex blobs, hashes
""", re.VERBOSE | re.IGNORECASE)


def read_sql_dump(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per INSERTed row that has text, meta {"table", "row"} (row counts per table).

    With options.text_fields, a row's text is those columns' string values; the column names come
    from the INSERT's own list, or else from the table's CREATE TABLE earlier in the dump.
    """
    rows_seen: Counter[str] = Counter()
    columns_of: dict[str, list[str]] = {}  # table -> column names, from CREATE TABLE
    wanted = {name.lower() for name in options.text_fields or []}
    kept = 0
    with open_text(path) as file:
        for statement in _statements(_tokens(file)):
            if (created := _created_table(statement)) is not None:
                columns_of[created[0]] = created[1]
                continue
            inserted = _inserted_rows(statement)
            if inserted is None:
                continue
            table, listed, rows = inserted
            names = listed or columns_of.get(table, [])
            for values in rows:
                rows_seen[table] += 1
                text = _named_text(names, values, wanted) if wanted else "\n".join(
                    value for value in values if isinstance(value, str) and looks_like_words(value))
                if text:
                    kept += 1
                    yield Record(text=text, source=str(path), format="sql",
                                 meta={"table": table, "row": rows_seen[table]})
    if wanted and not kept:
        known = ", ".join(f"{table}.{name}" for table, names in columns_of.items() for name in names)
        raise SkipFile(f"no table has the text field(s) {', '.join(options.text_fields)}"
                       + (f"; columns: {known}" if known else "; the dump names no columns (no CREATE TABLE)"))


def _named_text(names: list[str], values: list[str | None], wanted: set[str]) -> str:
    """The string values of the wanted columns, one per line."""
    return "\n".join(value for name, value in zip(names, values)
                     if name.lower() in wanted and isinstance(value, str) and value.strip())


def looks_like_words(value: str) -> bool:
    """True for strings worth training on, False for numbers, dates, uuids, hex and short codes."""
    value = value.strip()
    return len(value) >= MIN_TEXT_CHARS and not _NOT_WORDS.fullmatch(value)


def _tokens(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(kind, text) for each token of SQL read line by line; kind is a group name of _TOKEN.

    While a quote or comment is open, the text from its start is matched again only once it has
    doubled in length: matching it after every line would re-scan it each time, and a quote that
    never closes (30,000 lines) would cost quadratic time. Doubling keeps the total linear.
    """
    pending: list[str] = []  # lines from the start of an open quote or comment on
    pending_chars = 0
    retry_at = 0  # match again once pending_chars reaches this
    for line in lines:
        pending.append(line)
        pending_chars += len(line)
        if pending_chars < retry_at:
            continue
        tokens, rest = _split_tokens("".join(pending))
        yield from tokens
        pending, pending_chars = ([rest], len(rest)) if rest else ([], 0)  # rest: "" unless something is open
        retry_at = 2 * pending_chars
    tokens, rest = _split_tokens("".join(pending))
    yield from tokens
    if rest:
        raise ValueError(f"the SQL ends inside a quoted string or comment: {rest[:60]!r}")


def _split_tokens(text: str) -> tuple[list[tuple[str, str]], str]:
    """The tokens `text` starts with, and the rest (from an open quote or comment on)."""
    tokens, position = [], 0
    while match := _TOKEN.match(text, position):
        tokens.append((match.lastgroup, match.group()))
        position = match.end()
    return tokens, text[position:]


def _statements(tokens: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """The tokens of each statement, without spaces, comments and the closing ';'."""
    statement: list[tuple[str, str]] = []
    for kind, text in tokens:
        if kind in ("space", "comment"):
            continue
        if text == ";":
            if statement:
                yield statement
            statement = []
        else:
            statement.append((kind, text))
    if statement:
        yield statement


def _inserted_rows(statement: list[tuple[str, str]]) -> tuple[str, list[str], Iterator[list]] | None:
    """For INSERT [OR ...] INTO table [(columns)] VALUES (...), ...: the table, its listed columns ([] if
    none) and each row's values (strings unescaped; None for anything else: numbers, NULL, blobs, calls)."""
    words = [text.upper() if kind == "word" else "" for kind, text in statement]
    if words[0] not in ("INSERT", "REPLACE") or "INTO" not in words or "VALUES" not in words:
        return None  # also INSERT ... SELECT, which has no literal rows
    into, values = words.index("INTO"), words.index("VALUES")
    target = statement[into + 1:values]
    name_tokens = list(takewhile(lambda token: token[1] != "(", target))  # stop at (columns)
    table = _table_name(name_tokens)
    listed = [_unquote_name(kind, text) for kind, text in target[len(name_tokens):] if kind in ("word", "name")]
    return table, listed, _row_values(statement[values + 1:])


def _row_values(tokens: list[tuple[str, str]]) -> Iterator[list]:
    depth = 0
    row: list = []
    value = None  # the current value: a string literal, or None
    previous = ""
    for kind, text in tokens:
        if text == "(":
            depth += 1
            if depth == 1:
                row, value = [], None
        elif text == ")":
            depth -= 1
            if depth == 0:
                yield [*row, value]
        elif text == "," and depth == 1:
            row.append(value)
            value = None
        elif kind == "string" and depth == 1 and previous.upper() != "X":  # X'00ff' is a blob
            value = _unescape(text)
        previous = text


_CONSTRAINTS = {"PRIMARY", "KEY", "UNIQUE", "CONSTRAINT", "INDEX", "FOREIGN", "CHECK", "FULLTEXT", "SPATIAL"}


def _created_table(statement: list[tuple[str, str]]) -> tuple[str, list[str]] | None:
    """For CREATE TABLE [IF NOT EXISTS] name (column type ..., ..., constraints): the name and the columns."""
    words = [text.upper() if kind == "word" else "" for kind, text in statement[:6]]
    if words[:2] != ["CREATE", "TABLE"] or not any(text == "(" for _, text in statement):
        return None
    opening = next(i for i, (_, text) in enumerate(statement) if text == "(")
    table = _table_name([token for token in statement[2:opening] if token[1].upper() not in ("IF", "NOT", "EXISTS")])
    columns, depth, starting = [], 0, True
    for kind, text in statement[opening:]:
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif text == "," and depth == 1:
            starting = True
        elif starting and depth == 1:  # the first word of a definition: a column name, or a constraint
            if kind == "name" or text.upper() not in _CONSTRAINTS:
                columns.append(_unquote_name(kind, text))
            starting = False
    return table, columns


def _unescape(literal: str) -> str:
    """'it''s' -> it's, 'line\\n' -> line + newline; other backslashes stay (see _BACKSLASH_ESCAPES)."""
    def replace(match: re.Match) -> str:
        if match.group() == "''":
            return "'"
        return _BACKSLASH_ESCAPES.get(match.group(1), match.group())
    return _ESCAPE.sub(replace, literal[1:-1])


def _table_name(tokens: list[tuple[str, str]]) -> str:
    """`schema.table`, `"My Table"`, [Track] -> the name as written, quotes removed."""
    return "".join(_unquote_name(kind, text) for kind, text in tokens)


def _unquote_name(kind: str, text: str) -> str:
    if kind != "name":
        return text
    quote = text[0] if text[0] != "[" else "]"
    return text[1:-1].replace(quote * 2, quote)


# --- SQLite databases ----------------------------------------------------------------------------

SQLITE_HEADER = b"SQLite format 3\x00"
# Declared types that give a column TEXT affinity (https://www.sqlite.org/datatype3.html).
_TEXT_TYPE_MARKERS = ("CHAR", "CLOB", "TEXT")


def read_sqlite(path: Path, options: ReaderOptions, problems: list[str] | None = None) -> Iterator[Record]:
    """One Record per row with text in any table, meta {"table", "row"}; never writes to the file."""
    _check_header(path)
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield from _database_records(connection, path, options)
    except sqlite3.DatabaseError as error:
        raise ValueError(f"not a valid SQLite database: {error}") from error
    finally:
        connection.close()


def _check_header(path: Path) -> None:
    with path.open("rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if not header:
        raise SkipFile("empty file")
    if header != SQLITE_HEADER:
        raise ValueError(f"not a valid SQLite database: {path.name} does not start with the SQLite header")


def _database_records(connection: sqlite3.Connection, path: Path, options: ReaderOptions) -> Iterator[Record]:
    columns = {table: _text_columns(connection, table) for table in _tables(connection)}
    if options.text_fields:
        columns = {table: _narrow(names, options.text_fields) for table, names in columns.items()}
        if not any(columns.values()):
            raise SkipFile(f"no table has the text field(s) {', '.join(options.text_fields)}; "
                           f"text columns: {', '.join(_all_names(connection))}")
    for table, names in columns.items():
        if names:
            yield from _table_records(connection, path, table, names)


def _tables(connection: sqlite3.Connection) -> list[str]:
    # Virtual tables (full-text indexes and the like) may need extension modules to be read.
    rows = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name")
    return [name for (name,) in rows]


def _text_columns(connection: sqlite3.Connection, table: str) -> list[str]:
    """Columns declared as text, and untyped columns (which hold whatever was put in them)."""
    columns = connection.execute(f"PRAGMA table_info({_quote(table)})")
    return [name for _, name, declared, *_ in columns
            if not declared or any(marker in declared.upper() for marker in _TEXT_TYPE_MARKERS)]


def _narrow(names: list[str], text_fields: list[str]) -> list[str]:
    wanted = {field.lower() for field in text_fields}
    return [name for name in names if name.lower() in wanted]


def _all_names(connection: sqlite3.Connection) -> list[str]:
    return [f"{table}.{name}" for table in _tables(connection) for name in _text_columns(connection, table)]


def _table_records(connection: sqlite3.Connection, path: Path, table: str,
                   columns: list[str]) -> Iterator[Record]:
    query = f"SELECT {', '.join(map(_quote, columns))} FROM {_quote(table)}"
    for number, values in enumerate(connection.execute(query), start=1):
        # Untyped columns can hold numbers and blobs: only strings are text.
        text = "\n".join(value.strip() for value in values if isinstance(value, str) and value.strip())
        if text:
            yield Record(text=text, source=str(path), format="sqlite", meta={"table": table, "row": number})


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
