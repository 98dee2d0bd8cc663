"""Per-document cleaning: normalisation, de-hyphenation, slop, PII, quality, and clean_record's stats."""

import pytest

from lmforge.ingest.clean import (CleanStats, clean_record, dehyphenate, normalize_text, quality_issue,
                                  remove_slop, scrub_pii)
from lmforge.ingest.config import CleanConfig
from lmforge.ingest.record import Record

PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. After a long "
         "debate, the members agreed to fund the new library and to repair the old bridge.")

PYTHON = '''import os


def walk(root):
    """Yield every file below root."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):   # only Python
                yield os.path.join(folder, name)
\tpass
'''


# --- normalize_text --------------------------------------------------------------------------

def test_nfc_makes_composed_and_decomposed_equal():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert normalize_text(composed)[0] == normalize_text(decomposed)[0] == "caf\u00e9"


def test_control_and_invisible_characters_go_odd_spaces_become_spaces():
    text, removed = normalize_text("a\x00b\x07c\x9bd\u200be\ufefff\u00a0g\u3000h\tend")
    assert text == "abcdef g h end"  # a tab inside a line is a space too
    assert removed == 5


def test_line_ends_and_page_breaks_become_newlines():
    assert normalize_text("one\r\ntwo\rthree\fpage two")[0] == "one\ntwo\nthree\npage two"


def test_inner_space_runs_collapse_but_indentation_and_trailing_spaces_handled():
    text = "    indented   with  gaps   \n\t\ttabbed\t\tline\t"
    assert normalize_text(text)[0] == "    indented with gaps\n\t\ttabbed line"


def test_code_keeps_indentation_exactly():
    out, _ = normalize_text(PYTHON, collapse_inner_spaces=False)
    assert out == PYTHON.rstrip("\n")
    assert normalize_text(PYTHON)[0].split("\n")[4:7] == PYTHON.split("\n")[4:7]  # indentation even when collapsing


def test_three_or_more_blank_lines_become_two():
    assert normalize_text("a\n\n\n\n\n\nb\n\n\nc\n\n")[0] == "a\n\n\nb\n\n\nc"


# --- dehyphenate -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("the infor-\nmation age", "the information age"),
    ("a hyphen-\n   ated word", "a hyphenated word"),          # indentation after the break
    ("send an e-\nmail", "send an email"),                    # decided: joined, the common spelling
    ("a well-known fact", "a well-known fact"),               # no line break: a real hyphen
    ("Anglo-\nSaxon kings", "Anglo-\nSaxon kings"),           # capital after the break
    ("pages 10-\n20", "pages 10-\n20"),                       # digits are ranges, not words
    ("wait --\nthen go", "wait --\nthen go"),                 # a dash, not a hyphen
])
def test_dehyphenate(text, expected):
    out, joined = dehyphenate(text)
    assert out == expected
    assert joined == (out != text)


# --- slop ------------------------------------------------------------------------------------

def test_slop_lines_removed_and_clean_paragraph_untouched():
    text = (f"{PROSE}\nAs an AI language model, I cannot browse the web.\n"
            "I\u2019m sorry, but I can\u2019t help with that.\nThe bridge opens in May.\nI hope this helps!")
    out, removed = remove_slop(text)
    assert out == f"{PROSE}\nThe bridge opens in May."
    assert removed == 3
    assert remove_slop(PROSE) == (PROSE, 0)


def test_only_the_slop_sentence_is_cut_from_a_longer_line():
    text = ("As an AI language model, I cannot have opinions. The plot drags but the ending is strong.\n"
            "  Indented: apples are red. Certainly! Here is the list. Pears are green.")
    out, hit = remove_slop(text)
    assert out == "The plot drags but the ending is strong.\n  Indented: apples are red. Pears are green."
    assert hit == 2


def test_extra_slop_phrases_are_added_case_insensitively():
    out, removed = remove_slop("keep this\nDelve Into the tapestry\nand this", ["delve into"])
    assert (out, removed) == ("keep this\nand this", 1)
    assert remove_slop("delve into it")[1] == 0  # not built in


# --- PII -------------------------------------------------------------------------------------

@pytest.mark.parametrize("phone", [
    "+49 30 1234567", "+1 (555) 123-4567", "+44 20 7946 0958", "+33 6 12 34 56 78",
    "(555) 123-4567", "555-123-4567", "555.123.4567", "1-800-555-1234",
    "030 1234567", "06.12.34.56.78", "0171-1234567", "06 12 34 56 78",
])
def test_phone_numbers_replaced(phone):
    assert scrub_pii(f"Call me at {phone} tomorrow.") == ("Call me at <PHONE> tomorrow.", 1)


def test_emails_replaced():
    text = "Write to jane.doe+list@mail.example.co.uk or bob@example.org."
    assert scrub_pii(text) == ("Write to <EMAIL> or <EMAIL>.", 2)


@pytest.mark.parametrize("safe", [
    "In 1999 and 2024", "on 2024-03-15", "on 15.03.2024", "on 03/15/2024", "on 01-02-2023 1200",
    "version 3.11.4", "build 10.0.19041.1234", "costs $1,299.99", "costs 1.299,00 EUR", "1 299 000 people",
    "order 12345", "zip 90210", "id 123456", "ISBN 978-0-306-40615-7", "at 12:30:45", "pi is 3.14159265",
    "up +10% to 1,000,000", "IP 192.168.100.200",
])
def test_numbers_that_are_not_phones_untouched(safe):
    assert scrub_pii(safe) == (safe, 0)


# --- quality ---------------------------------------------------------------------------------

def test_quality_drops_short_and_symbol_soup_but_keeps_prose_and_code():
    cfg = CleanConfig()
    assert quality_issue("Too short.", "text", cfg) == "too_short"
    soup = "|| 12 34 ## == 0x3F 99.9% {}[] <<>> -- 1234 5678 ;; @@ " * 3
    assert quality_issue(soup, "text", cfg) == "mostly_non_text"
    assert quality_issue(PROSE, "text", cfg) is None
    assert quality_issue("x = {[(1, 2), (3, 4)]} * 2 ** 8 // 3 == 0 or a[0][1] >= -1;" * 2, "code", cfg) is None


# --- clean_record and its stats --------------------------------------------------------------

def test_clean_record_runs_each_step_and_counts_it():
    cfg = CleanConfig(pii=True)
    stats = CleanStats()
    pdf = Record(f"{PROSE}\nthe infor-\nmation desk\n\n- 2 -\n\nMail jane@example.com\r\nI hope this helps!",
                 "a.pdf", "pdf", {"pages": 2})
    kept = clean_record(pdf, cfg, stats)
    assert kept.text == f"{PROSE}\nthe information desk\n\n\nMail <EMAIL>"
    assert (kept.source, kept.format, kept.meta) == ("a.pdf", "pdf", {"pages": 2})
    assert clean_record(Record("short", "b.txt", "text"), cfg, stats) is None
    assert clean_record(Record(PYTHON, "c.py", "code"), cfg, stats).text == PYTHON.rstrip("\n")
    s = stats.as_dict()
    assert s["documents_in"] == 3 and s["documents_out"] == 2
    assert s["documents_dropped_by_reason"] == {"too_short": 1}
    assert (s["page_number_lines_removed"], s["hyphenations_joined"], s["slop_lines_removed"]) == (1, 1, 1)
    assert s["pii_replaced"] == 1
    assert s["chars_in"] == len(pdf.text) + len("short") + len(PYTHON)
    assert s["chars_out"] == len(kept.text) + len(PYTHON.rstrip("\n"))


def test_switched_off_steps_change_nothing():
    cfg = CleanConfig(normalize=False, dehyphenate=False, boilerplate=False, slop_filter=False,
                      pii=False, min_chars=0, max_non_text_share=1.0)
    text = "the infor-\nmation\r\n12\nAs an AI language model\nbob@example.com  \n\n\n\n"
    assert clean_record(Record(text, "a.pdf", "pdf"), cfg, CleanStats()).text == text


def test_code_is_not_dehyphenated_or_slop_filtered():
    code = 'x = a -\nb\nPROMPT = "As an AI language model"  # refuse\n' * 3
    assert clean_record(Record(code, "p.py", "code"), CleanConfig(), CleanStats()).text == code.rstrip("\n")


def test_dense_slop_drops_the_document_and_drop_document_mode_drops_on_one_hit():
    chat = f"Certainly! Here is a summary.\n{PROSE}\nI hope this helps!\nRegenerate response"
    stats = CleanStats()
    assert clean_record(Record(chat, "chat.txt", "text"), CleanConfig(), stats) is None
    one_hit = f"{PROSE}\n{PROSE}\n{PROSE}\n{PROSE}\nI hope this helps!"
    assert clean_record(Record(one_hit, "n.txt", "text"), CleanConfig(), stats) is not None
    strict = CleanConfig(slop_action="drop_document")
    assert clean_record(Record(one_hit, "n.txt", "text"), strict, stats) is None
    assert stats.slop_documents_dropped == 2
    assert stats.documents_dropped_by_reason == {"slop": 2}


def test_stats_merge():
    a, b = CleanStats(documents_in=2, exact_duplicates=1), CleanStats(documents_in=3, near_duplicates=1)
    a.documents_dropped_by_reason["too_short"] = 1
    b.documents_dropped_by_reason.update(too_short=2, slop=1)
    merged = a.merge(b).as_dict()
    assert merged["documents_in"] == 5
    assert merged["documents_dropped_by_reason"] == {"too_short": 3, "slop": 1}
    assert merged["documents_out"] == 5 - 4 - 2


def test_config_validation():
    CleanConfig().validate()
    with pytest.raises(ValueError, match="slop_action"):
        CleanConfig(slop_action="drop_paragraph").validate()
    with pytest.raises(ValueError, match="near_threshold"):
        CleanConfig(near_threshold=1.5).validate()


def test_clean_record_applies_boilerplate_removal_to_prose_only():
    def drop_footer(text):
        kept = [line for line in text.split("\n") if line != "Footer of the site"]
        return "\n".join(kept), text.count("Footer of the site")

    body = "A paragraph about tide pools and the small fish that live in them all summer long.\n"
    stats = CleanStats()
    prose = clean_record(Record(body + "Footer of the site", "a.txt", "text"), CleanConfig(), stats, drop_footer)
    source = 'HELP = """\nFooter of the site\n"""\n' + "value = compute(1, 2, 3)\n" * 5
    code = clean_record(Record(source, "a.py", "code"), CleanConfig(), stats, drop_footer)
    assert prose.text.strip() == body.strip() and stats.lines_removed_boilerplate == 1
    assert code is not None and "\nFooter of the site\n" in code.text and stats.lines_removed_boilerplate == 1
