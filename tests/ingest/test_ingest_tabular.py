"""Tabular readers: CSV/TSV, JSON, JSONL and Parquet rows become one Record each."""

import json
import sys
from pathlib import Path

import pytest

from lmforge.ingest.readers import tabular
from lmforge.ingest.readers.tabular import read_csv, read_json, read_jsonl, read_parquet
from lmforge.ingest.record import ReaderOptions, SkipFile
from tests.testdata import SAMPLE_DOCS

SAMPLE_CSV = SAMPLE_DOCS / "csv"


def texts(records) -> list[str]:
    return [record.text for record in records]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(row if isinstance(row, str) else json.dumps(row) + "\n" for row in rows))
    return path


# --- CSV and TSV ---------------------------------------------------------------------------------

def test_csv_text_column_is_the_text(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,stars,text\n'
                    '1,5,"Lovely little cafe, great coffee."\n'
                    '2,1,\n'                                      # empty text: no record
                    '3,4,"Two lines,\nin one quoted cell."\n', encoding="utf-8")
    records = list(read_csv(path, ReaderOptions()))
    assert texts(records) == ["Lovely little cafe, great coffee.", "Two lines,\nin one quoted cell."]
    assert [record.meta for record in records] == [{"row": 1, "fields": ["text"]}, {"row": 3, "fields": ["text"]}]
    assert records[0].format == "csv" and records[0].source == str(path)


def test_csv_without_text_column_joins_string_fields_with_names(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("user_id,Name,City,age,height,Notes\n"
                    "u-17,Ada Lovelace,London,36,1.65,NA\n"
                    "u-18,Alan Turing,,41,,Broke the Enigma cipher\n")
    assert texts(read_csv(path, ReaderOptions())) == [
        "Name: Ada Lovelace\nCity: London",
        "Name: Alan Turing\nNotes: Broke the Enigma cipher",
    ]


def test_text_field_is_found_whatever_its_case(tmp_path):
    path = tmp_path / "posts.csv"
    path.write_text("Title,Body\nHello,First post body.\n")
    assert texts(read_csv(path, ReaderOptions())) == ["First post body."]


def test_tsv_is_split_on_tabs(tmp_path):
    path = tmp_path / "notes.tsv"
    path.write_text("id\ttext\n1\tcommas, inside, are fine\n2\tsecond note\n")
    assert texts(read_csv(path, ReaderOptions())) == ["commas, inside, are fine", "second note"]


def test_unknown_extension_sniffs_the_delimiter(tmp_path):
    path = tmp_path / "export.txt"
    path.write_text("id;text\n1;semicolon separated row\n2;another row here\n")
    assert texts(read_csv(path, ReaderOptions())) == ["semicolon separated row", "another row here"]


def test_csv_with_semicolons_from_a_decimal_comma_locale(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text('id;price;text\n1;3,50;"Cheap, and good; really."\n2;4,20;Second row\n')
    assert texts(read_csv(path, ReaderOptions())) == ["Cheap, and good; really.", "Second row"]
    commas = tmp_path / "commas.csv"  # semicolons inside cells do not fool it
    commas.write_text('id,text\n1,"one; two; three; four"\n2,"five; six"\n')
    assert texts(read_csv(commas, ReaderOptions())) == ["one; two; three; four", "five; six"]


def test_byte_order_mark_does_not_hide_the_text_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,n\nÜber café,1\n".encode("utf-8-sig"))
    assert texts(read_csv(path, ReaderOptions())) == ["Über café"]


def test_text_field_option_overrides_the_default(tmp_path):
    path = tmp_path / "articles.csv"
    path.write_text("text,summary,extra\nlong body one,short one,x\nlong body two,short two,y\n")
    records = list(read_csv(path, ReaderOptions(text_fields=["summary"])))
    assert texts(records) == ["short one", "short two"]
    assert records[0].meta["fields"] == ["summary"]
    both = read_csv(path, ReaderOptions(text_fields=["summary", "text"]))
    assert texts(both) == ["short one\n\nlong body one", "short two\n\nlong body two"]


def test_missing_text_field_names_the_available_fields(tmp_path):
    path = tmp_path / "articles.csv"
    path.write_text("title,body\nA,first\n")
    with pytest.raises(SkipFile, match="message.*available fields: body, title"):
        list(read_csv(path, ReaderOptions(text_fields=["message"])))


@pytest.mark.parametrize("name, rows, sample_field", [("iris.csv", 150, "species: "),
                                                      ("penguins.csv", 344, "island: ")])
def test_real_sample_csvs_give_one_record_per_row(name, rows, sample_field):
    path = SAMPLE_CSV / name
    records = list(read_csv(path, ReaderOptions()))
    assert len(records) == rows
    assert all(sample_field in record.text for record in records)
    assert not any(char.isdigit() for record in records for char in record.text)  # measurements left out


# --- JSON ----------------------------------------------------------------------------------------

def test_json_array_of_objects(tmp_path):
    path = tmp_path / "faq.json"
    path.write_text(json.dumps([{"id": 1, "content": "How do I reset my password?"},
                                {"id": 2, "content": "Where is my invoice?"},
                                "not an object"]))
    problems = []
    records = list(read_json(path, ReaderOptions(), problems=problems))
    assert texts(records) == ["How do I reset my password?", "Where is my invoice?"]
    assert records[1].meta == {"row": 2, "fields": ["content"]} and records[1].format == "json"
    assert problems == ["item 3: not a JSON object"]


def test_a_json_array_is_streamed_item_by_item(tmp_path, monkeypatch):
    rows = [{"text": f"row {i}: brackets ] [ and commas , inside", "tags": [[1, 2], {"a": "]"}]} for i in range(50)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, indent=1))
    monkeypatch.setattr(tabular, "JSON_CHUNK_CHARS", 7)  # items cut at every possible place
    assert texts(read_json(path, ReaderOptions())) == [row["text"] for row in rows]
    numbers = tmp_path / "numbers.json"  # a number cut by a chunk boundary must not be read as two
    numbers.write_text('[{"text": "first item"}, 1234567890123, {"text": "last item"}]')
    problems: list[str] = []
    assert texts(read_json(numbers, ReaderOptions(), problems)) == ["first item", "last item"]
    assert problems == ["item 2: not a JSON object"]  # one item, not two pieces of a number
    cut = tmp_path / "cut.json"
    cut.write_text('[{"text": "complete item"}, {"text": "cut of')
    with pytest.raises(json.JSONDecodeError):
        list(read_json(cut, ReaderOptions()))


def test_json_object_holding_one_list_of_objects(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"version": 3, "tags": ["a", "b"],
                                "items": [{"body": "first body"}, {"body": "second body"}]}))
    assert texts(read_json(path, ReaderOptions())) == ["first body", "second body"]


def test_json_single_object(tmp_path):
    path = tmp_path / "post.json"
    path.write_text(json.dumps({"title": "Hello", "article": "The whole article."}))
    assert texts(read_json(path, ReaderOptions())) == ["The whole article."]


# --- JSONL ---------------------------------------------------------------------------------------

def test_jsonl_malformed_line_is_reported_and_the_rest_kept(tmp_path, caplog):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"text": "first message"}, '{"text": "broken\n', "\n",
                                                 {"text": "fourth line"}])
    problems = []
    records = list(read_jsonl(path, ReaderOptions(), problems=problems))
    assert texts(records) == ["first message", "fourth line"]
    assert [record.meta["row"] for record in records] == [1, 4]  # line numbers
    assert len(problems) == 1 and problems[0].startswith("line 2: invalid JSON")
    assert "line 2: invalid JSON" in caplog.text


def test_jsonl_problems_are_listed_only_up_to_a_limit(tmp_path):
    path = write_jsonl(tmp_path / "junk.jsonl", ["{oops\n"] * 30 + [{"text": "survivor"}])
    problems = []
    assert texts(read_jsonl(path, ReaderOptions(), problems=problems)) == ["survivor"]
    assert len(problems) == 21 and problems[-1] == "10 more problems like these were not listed"


def test_nested_field_by_dotted_name(tmp_path):
    path = write_jsonl(tmp_path / "messages.jsonl", [
        {"id": 1, "message": {"role": "user", "content": "How tall is Everest?"}},
        {"id": 2, "message": {"role": "assistant", "content": "About 8,849 metres."}},
        {"id": 3, "event": "typing"},
    ])
    problems = []
    records = list(read_jsonl(path, ReaderOptions(text_fields=["message.content"]), problems=problems))
    assert texts(records) == ["How tall is Everest?", "About 8,849 metres."]
    assert records[0].meta == {"row": 1, "fields": ["message.content"]}
    assert problems == ["1 row(s) without the text field(s) message.content skipped"]


def test_nested_strings_without_text_field_are_named_by_path(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [{"id": 7, "user": {"name": "Grace", "age": 85}}])
    assert texts(read_jsonl(path, ReaderOptions())) == ["user.name: Grace"]


def test_jsonl_where_no_row_has_the_field_is_skipped(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", [{"a": "x", "b": "y"}, {"c": "z"}])
    with pytest.raises(SkipFile, match="available fields: a, b, c"):
        list(read_jsonl(path, ReaderOptions(text_fields=["text"])))


# --- Parquet -------------------------------------------------------------------------------------

def test_parquet_without_pyarrow_is_skipped_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(SkipFile, match=r"pip install .lmforge\[parquet\]"):
        list(read_parquet(path, ReaderOptions()))


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["first row", "second row"]}), path)
    assert texts(read_parquet(path, ReaderOptions())) == ["first row", "second row"]
