"""An Ollama Modelfile next to the GGUF file: `ollama create NAME -f Modelfile` then `ollama run NAME`.

Ollama does not run the GGUF's Jinja chat template; it needs its own, written in Go's text/template
syntax over `.Messages` (each with `.Role` and `.Content`). lmforge's ChatTemplate is plain data (a
format string per role), so the conversion is mechanical: literal text stays literal, {content}
becomes {{ .Content }}, and each role gets its own branch with its name written out (Go templates
have no capitalize function for {Role}). No `{{-` whitespace trimming is used: it would also eat the
newlines that end a message.

`parse_modelfile` reads the file back and checks what Ollama would reject (unknown instructions or
parameters, unbalanced template actions); Ollama itself is not needed for the tests.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from ..data.templates import SUPERVISED_ROLE, ChatTemplate

MODELFILE = "Modelfile"
ROLES = ("system", "user", "assistant", "tool")
INSTRUCTIONS = {"FROM", "TEMPLATE", "SYSTEM", "PARAMETER", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"}
# Ollama's parameter names and the type of each value.
PARAMETERS = {"stop": str, "temperature": float, "top_k": int, "top_p": float, "min_p": float,
              "repeat_penalty": float, "repeat_last_n": int, "num_ctx": int, "num_predict": int, "seed": int}


def go_chat_template(template: ChatTemplate, eot_token: str = "") -> str:
    """`template` as an Ollama TEMPLATE: every message in its role's format, then the generation prompt."""
    branches = []
    for i, role in enumerate(ROLES):
        text = _go_message(template, role, eot_token)
        branches.append(("{{ if " if i == 0 else "{{ else if ") + f'eq .Role {json.dumps(role)} }}}}' + text)
    # A role not listed above (rare) is written with the default format and its name as given.
    fallback = _go_format(template.message, role_field="{{ .Role }}", capitalized_role="{{ .Role }}")
    body = "".join(branches) + "{{ else }}" + fallback + "{{ end }}"
    return "{{ range .Messages }}" + body + "{{ end }}" + _go_literal(template.generation_prompt)


def _go_message(template: ChatTemplate, role: str, eot_token: str) -> str:
    text = _go_format(template.message_format(role), role_field=_go_literal(role),
                      capitalized_role=_go_literal(role.capitalize()))
    if role == SUPERVISED_ROLE and template.eot_after_answer and eot_token:
        text += _go_literal(eot_token)  # what lmforge's fine-tuning put after each answer
    return text


def _go_format(role_format: str, role_field: str, capitalized_role: str) -> str:
    fields = {"content": "{{ .Content }}", "role": role_field, "Role": capitalized_role}
    parts = []
    for literal, name, _, _ in string.Formatter().parse(role_format):
        parts.append(_go_literal(literal))
        if name is not None:
            parts.append(fields[name])
    return "".join(parts)


def _go_literal(text: str) -> str:
    """Text that a Go template prints as it is: only "{{" would start an action."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile_text(gguf_name: str, template: ChatTemplate, eot_token: str, context_length: int) -> str:
    """The Modelfile: the GGUF beside it, the chat format, stop strings and lmforge's sampling defaults."""
    from ..generate.params import SamplingParams

    defaults = SamplingParams()
    lines = ["# Written by `lmforge export --format gguf`. Use: ollama create NAME -f <this file>",
             f"FROM ./{gguf_name}", f"TEMPLATE {_quoted(go_chat_template(template, eot_token))}"]
    if template.default_system:
        lines.append(f"SYSTEM {_quoted(template.default_system)}")
    for stop in dict.fromkeys([*template.stop, eot_token]):  # ordered, without repeats
        if stop:
            lines.append(f"PARAMETER stop {_quoted(stop)}")
    lines += [f"PARAMETER temperature {defaults.temperature}", f"PARAMETER top_k {defaults.top_k}",
              f"PARAMETER top_p {defaults.top_p}", f"PARAMETER min_p {defaults.min_p}",
              f"PARAMETER repeat_penalty {defaults.repetition_penalty}",
              f"PARAMETER num_predict {defaults.max_new_tokens}", f"PARAMETER num_ctx {context_length}"]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    # Ollama reads "..." on one line, and """...""" across lines; neither has escapes.
    if '"""' in value:
        raise ValueError(f"--format gguf: a Modelfile cannot hold text containing three quotes: {value!r}")
    return f'"""{value}"""' if "\n" in value or '"' in value else f'"{value}"'


def write_modelfile(out_file: Path, gguf_name: str, template: ChatTemplate, eot_token: str,
                    context_length: int) -> Path:
    out_file.write_text(modelfile_text(gguf_name, template, eot_token, context_length), encoding="utf-8")
    return out_file


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs of a Modelfile; ValueError for what Ollama would not accept."""
    commands = []
    lines = iter(text.split("\n"))
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        instruction, _, rest = stripped.partition(" ")
        instruction = instruction.upper()
        if instruction not in INSTRUCTIONS:
            raise ValueError(f"Modelfile: unknown instruction {instruction!r}")
        value = _multiline_value(rest, lines) if '"""' in rest else rest.strip()
        _check_command(instruction, value)
        commands.append((instruction, value))
    if "FROM" not in dict(commands):
        raise ValueError("Modelfile: no FROM instruction")
    return commands


def _multiline_value(rest: str, lines) -> str:
    """The text between \"\"\" and the next \"\"\", read on across lines (a PARAMETER keeps its name)."""
    head, _, tail = rest.partition('"""')
    while '"""' not in tail:
        following = next(lines, None)
        if following is None:
            raise ValueError('Modelfile: unterminated """')
        tail += "\n" + following
    body, _, after = tail.partition('"""')
    if after.strip():
        raise ValueError(f'Modelfile: unexpected text after a closing """: {after!r}')
    return head + body


def _check_command(instruction: str, value: str) -> None:
    if instruction == "PARAMETER":
        name, _, raw = value.partition(" ")
        if name not in PARAMETERS:
            raise ValueError(f"Modelfile: unknown parameter {name!r}")
        raw = raw[1:-1] if PARAMETERS[name] is str and raw.startswith('"') and raw.endswith('"') else raw
        PARAMETERS[name](raw)  # ValueError for a number that is not one
    elif instruction == "TEMPLATE":
        check_go_template(value)


_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_OPENERS = ("if ", "range ", "with ")
_FIELD = r"\.[A-Z][A-Za-z]*"
_STRING = r'"(?:[^"\\]|\\.)*"'
_EXPRESSIONS = [re.compile(p) for p in (
    rf"{_FIELD}", rf"{_STRING}", rf"(?:if|else if|with) (?:{_FIELD}|eq {_FIELD} {_STRING}|not {_FIELD})",
    rf"range (?:\$\w+, \$\w+ := )?{_FIELD}", "else", "end")]


def check_go_template(source: str) -> None:
    """Raise ValueError unless every {{ action }} is a known form and if/range blocks are balanced."""
    depth = 0
    for match in _ACTION.finditer(source):
        action = match.group(2)
        if not any(pattern.fullmatch(action) for pattern in _EXPRESSIONS):
            raise ValueError(f"TEMPLATE: unsupported action {{{{ {action} }}}}")
        if action.startswith(_OPENERS):
            depth += 1
        elif action == "end":
            depth -= 1
        elif action.startswith("else") and depth < 1:
            raise ValueError("TEMPLATE: else outside if/range")
        if depth < 0:
            raise ValueError("TEMPLATE: {{ end }} without an open block")
    if depth:
        raise ValueError(f"TEMPLATE: {depth} block(s) never closed with {{{{ end }}}}")
    if "{{" in _ACTION.sub("", source):
        raise ValueError("TEMPLATE: an unclosed {{")
