"""Build the data of the `lmforge-quick` benchmark tasks (src/lmforge/eval/tasks/*.jsonl) from text in this repo.

    python tools/build_quick_tasks.py

Run once by a developer; its output is committed. Sources, both inside the repository:
* the last tenth of testdata/tinyshakespeare/input.txt (public domain; the tenth a model trained on
  the file with lmforge's default 0.1 validation split never trains on);
* lmforge's own Python source (src/lmforge, MIT licence), which no demo corpus contains.
Deterministic: a fixed seed, sorted file lists.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "lmforge" / "eval" / "tasks"
SEED = 20261203
EXAMPLES = 100
PASSAGES = 20


def write_jsonl(name: str, rows: list[dict]) -> None:
    with open(OUT / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} examples")


def last_word_cloze(lines: list[str], rng: random.Random) -> list[dict]:
    """The last word of a line of verse: the previous line and this one up to its last word are the
    context; the word and three line-final words of other lines, of about its length, the choices."""
    ends = {}  # line index -> (line without its last word, last word)
    for i, line in enumerate(lines):
        words = line.rstrip(" ,.;:!?'-").split(" ")
        if i > 0 and lines[i - 1].strip() and len(words) >= 4 and words[-1].isalpha() and len(words[-1]) >= 3:
            ends[i] = (line[:line.rstrip(" ,.;:!?'-").rfind(" ")], words[-1])
    rows = []
    for i in sorted(rng.sample(sorted(ends), EXAMPLES)):
        head, answer = ends[i]
        similar = sorted({w for j, (_, w) in ends.items() if abs(len(w) - len(answer)) <= 1
                          and w.lower() != answer.lower() and abs(j - i) > 20})
        choices = [answer] + rng.sample(similar, 3)
        rng.shuffle(choices)
        rows.append({"context": lines[i - 1] + "\n" + head, "choices": choices, "answer": choices.index(answer)})
    return rows


PYTHON_KEYWORDS = ("def", "return", "if", "for", "import", "from", "class", "with", "raise", "elif", "while",
                   "try", "yield", "assert")


def python_keyword_cloze(lines: list[str], rng: random.Random) -> list[dict]:
    """The keyword a line of Python starts with: the four lines before and the line's indentation are the
    context; the keyword and three other keywords the choices."""
    starts = [i for i in range(4, len(lines)) if lines[i].split(" ", 1)[0].strip() and
              lines[i].lstrip().split(" ", 1)[0].rstrip(":") in PYTHON_KEYWORDS]
    rows = []
    for i in sorted(rng.sample(starts, EXAMPLES)):
        line = lines[i]
        indent = line[:len(line) - len(line.lstrip())]
        answer = line.lstrip().split(" ", 1)[0].rstrip(":")
        choices = [answer] + rng.sample([k for k in PYTHON_KEYWORDS if k != answer], 3)
        rng.shuffle(choices)
        rows.append({"context": "\n".join(lines[i - 4:i]) + "\n" + indent, "choices": choices,
                     "answer": choices.index(answer)})
    return rows


def shakespeare_lines() -> list[str]:
    text = (ROOT / "testdata" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return text[int(len(text) * 0.9):].split("\n")[1:]  # from the first whole line of the last tenth


def python_lines() -> list[str]:
    lines = []
    for path in sorted((ROOT / "src" / "lmforge").rglob("*.py")):
        lines += path.read_text(encoding="utf-8").split("\n")
    return lines


def shakespeare_passages(rng: random.Random) -> list[dict]:
    """PASSAGES stretches of about 600 characters that start at a speaker's name, for perplexity."""
    text = "\n".join(shakespeare_lines())
    starts = [i + 2 for i in range(len(text) - 700) if text.startswith("\n\n", i)]
    rows = []
    for start in sorted(rng.sample(starts, PASSAGES)):
        end = text.find("\n\n", start + 600)
        rows.append({"text": text[start:end if end != -1 else start + 600]})
    return rows


def main() -> None:
    rng = random.Random(SEED)
    write_jsonl("shakespeare_last_word.jsonl", last_word_cloze(shakespeare_lines(), rng))
    write_jsonl("python_keyword.jsonl", python_keyword_cloze(python_lines(), rng))
    write_jsonl("shakespeare_passages.jsonl", shakespeare_passages(rng))


if __name__ == "__main__":
    main()
