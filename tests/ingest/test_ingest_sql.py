"""SQL readers: INSERTed rows of a dump and rows of a SQLite database become Records."""

import sqlite3
from pathlib import Path

import pytest

from lmforge.ingest.readers.sql import looks_like_words, read_sql_dump, read_sqlite
from lmforge.ingest.record import ReaderOptions, SkipFile
from tests.testdata import SAMPLE_DOCS

CHINOOK_DUMP = SAMPLE_DOCS / "sql" / "Chinook_Sqlite.sql"

DUMP = r"""
-- A comment with a quote ' and a semicolon ; that must not confuse the tokenizer
/* a block comment
   over two lines; it's still a comment */
CREATE TABLE posts (id INTEGER, created TEXT, uid TEXT, body TEXT);
INSERT INTO posts (id, created, uid, body) VALUES
  (1, '2024-01-31 10:00:00', '123e4567-e89b-12d3-a456-426614174000', 'It''s a sunny day; the café opens early.'),
  (2, '2024-02-01', 'deadbeefdeadbeefdeadbeef', 'Line one
line two of a multi-line post'),
  (3, '2024-02-02', 'ok', NULL);
INSERT INTO `notes` VALUES (10, 'MySQL writes \'backslash\' escapes\nand newlines', X'00ff');
INSERT INTO "public"."tags" VALUES ('rock'), ('AC/DC');
UPDATE posts SET body = 'not an insert' WHERE id = 1;
INSERT INTO [Track] ([Name]) VALUES ('Cavalleria Rusticana \ Act \ Intermezzo');
"""


def texts(records) -> list[str]:
    return [record.text for record in records]


def make_database(path: Path) -> Path:
    connection = sqlite3.connect(path)
    connection.executescript("""
        CREATE TABLE articles (id INTEGER PRIMARY KEY, title VARCHAR(80), body TEXT, views INTEGER);
        INSERT INTO articles VALUES (1, 'Tides', 'Tide pools form among the rocks.', 1234);
        INSERT INTO articles VALUES (2, 'Empty', '', 5);
        INSERT INTO articles VALUES (3, NULL, NULL, 6);
        CREATE TABLE comments (id INTEGER PRIMARY KEY, stars INTEGER, note);
        INSERT INTO comments VALUES (1, 5, 'Loved the anemones.');
        INSERT INTO comments VALUES (2, 4, 98765);
    """)
    connection.commit()
    connection.close()
    return path


# --- dumps ---------------------------------------------------------------------------------------

def test_dump_inserted_rows_become_records(tmp_path):
    path = tmp_path / "dump.sql"
    path.write_text(DUMP, encoding="utf-8")
    records = list(read_sql_dump(path, ReaderOptions()))
    assert texts(records) == [
        "It's a sunny day; the café opens early.",
        "Line one\nline two of a multi-line post",
        "MySQL writes 'backslash' escapes\nand newlines",
        "rock",
        "AC/DC",
        "Cavalleria Rusticana \\ Act \\ Intermezzo",  # no backslash escapes in standard SQL: kept
    ]
    assert [record.meta for record in records] == [
        {"table": "posts", "row": 1}, {"table": "posts", "row": 2}, {"table": "notes", "row": 1},
        {"table": "public.tags", "row": 1}, {"table": "public.tags", "row": 2}, {"table": "Track", "row": 1},
    ]
    assert all(record.format == "sql" and record.source == str(path) for record in records)


@pytest.mark.parametrize("value, expected", [
    ("A sentence with words", True), ("Rock", True), ("12 Monkeys", True),
    ("ok", False), ("3.14", False), ("2024-01-31 10:00:00", False), ("2024-01-31T10:00:00Z", False),
    ("123e4567-e89b-12d3-a456-426614174000", False), ("0xDEADBEEFDEADBEEF", False),
])
def test_only_strings_that_look_like_words_are_kept(value, expected):
    assert looks_like_words(value) is expected


def test_text_fields_pick_columns_of_a_dump(tmp_path):
    path = tmp_path / "blog.sql"
    path.write_text(r"""
        CREATE TABLE IF NOT EXISTS `posts` (
          `id` int NOT NULL, `title` varchar(200), `body` text, `price` decimal(10,2),
          PRIMARY KEY (`id`), KEY `by_title` (`title`)
        );
        INSERT INTO `posts` VALUES (1, 'Hello', 'First post, with a comma', 3.50),
                                   (2, 'Skip me', NULL, NOW()), (3, 'Third', 'Its body', 1.00);
        INSERT INTO notes (id, body, extra) VALUES (7, 'A note body', 'not this one');
    """)
    records = list(read_sql_dump(path, ReaderOptions(text_fields=["BODY"])))
    assert texts(records) == ["First post, with a comma", "Its body", "A note body"]
    assert [record.meta for record in records] == [{"table": "posts", "row": 1}, {"table": "posts", "row": 3},
                                                    {"table": "notes", "row": 1}]
    titles = read_sql_dump(path, ReaderOptions(text_fields=["title", "body"]))
    assert texts(titles)[0] == "Hello\nFirst post, with a comma"
    with pytest.raises(SkipFile, match="no table has the text field.*posts.title, posts.body, posts.price"):
        list(read_sql_dump(path, ReaderOptions(text_fields=["content"])))


def test_text_fields_in_the_real_chinook_dump():
    records = list(read_sql_dump(CHINOOK_DUMP, ReaderOptions(text_fields=["Composer"])))
    assert {record.meta["table"] for record in records} == {"Track"}
    assert "Angus Young, Malcolm Young, Brian Johnson" in texts(records)


def test_dump_ending_inside_a_string_fails_clearly(tmp_path):
    path = tmp_path / "cut.sql"
    path.write_text("INSERT INTO t VALUES ('complete row');\nINSERT INTO t VALUES ('cut off here\n")
    with pytest.raises(ValueError, match="ends inside a quoted string"):
        list(read_sql_dump(path, ReaderOptions()))


def test_real_chinook_dump():
    records = list(read_sql_dump(CHINOOK_DUMP, ReaderOptions()))
    assert len(records) > 4000
    assert {"Album", "Artist", "Track", "Genre"} <= {record.meta["table"] for record in records}
    assert "Guns N' Roses" in texts(records)
    assert not any("2009-01-01" in record.text for record in records)  # invoice dates left out


# --- SQLite databases ----------------------------------------------------------------------------

def test_sqlite_text_columns_become_records(tmp_path):
    path = make_database(tmp_path / "blog.db")
    before = path.read_bytes()
    records = list(read_sqlite(path, ReaderOptions()))
    assert texts(records) == ["Tides\nTide pools form among the rocks.", "Empty", "Loved the anemones."]
    assert [record.meta for record in records] == [
        {"table": "articles", "row": 1}, {"table": "articles", "row": 2}, {"table": "comments", "row": 1}]
    assert not any(number in record.text for record in records for number in ("1234", "98765"))
    assert path.read_bytes() == before  # opened read-only


def test_sqlite_text_fields_narrow_the_columns(tmp_path):
    path = make_database(tmp_path / "blog.sqlite")
    assert texts(read_sqlite(path, ReaderOptions(text_fields=["BODY"]))) == ["Tide pools form among the rocks."]
    with pytest.raises(SkipFile, match="articles.title"):
        list(read_sqlite(path, ReaderOptions(text_fields=["summary"])))


@pytest.mark.parametrize("content", [b"this is not a database at all, just some bytes" * 20,
                                     b"SQLite format 3\x00" + b"\xff" * 4000])
def test_corrupt_database_fails_clearly(tmp_path, content):
    path = tmp_path / "broken.db"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid SQLite database"):
        list(read_sqlite(path, ReaderOptions()))


def test_real_chinook_database(tmp_path):
    path = tmp_path / "chinook.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(CHINOOK_DUMP.read_text(encoding="utf-8"))
    connection.close()
    records = list(read_sqlite(path, ReaderOptions(text_fields=["Name", "Composer"])))
    tracks = [record for record in records if record.meta["table"] == "Track"]
    assert len(tracks) == 3503
    assert tracks[0].text == "For Those About To Rock (We Salute You)\nAngus Young, Malcolm Young, Brian Johnson"
