"""Chat templates: how a conversation is written out as one text, and which parts of it a model learns.

A language model only continues text. To make it follow instructions or chat, every conversation
is written in one fixed format (the template) both when fine-tuning and when generating:

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n      (ChatML)

At generation time the text ends with the start of the assistant's turn (the generation prompt)
and the model writes the rest, stopping at a stop string. A model answers well only in the format
it was tuned on, so the template is stored next to the checkpoint (`chat_template.json`).

When fine-tuning, the model should learn to *write answers*, not to predict the user's questions.
`render_for_training` therefore cuts the text into segments flagged supervised or not: exactly
what the model will have to produce after the generation prompt (the assistant's words and the
text that ends its turn) is supervised; system and user messages and the generation prompt are not.

A template is data, not code:

    message            how one message is written; {role} is the role as given ("user"),
                       {Role} the same capitalised ("User"), {content} the text
    generation_prompt  appended after the last message to start the assistant's reply
    stop               strings that end the reply (not included in it)
    role_messages      optional: a different `message` format for some roles (e.g. Alpaca's
                       "### Instruction:" for users and "### Response:" for the assistant)
    default_system     optional: system message used when a conversation brings none
    eot_after_answer   the model saw the end-of-text token after every answer in training, as
                       lmforge's instruction tuning writes it (set in the chat_template.json that
                       fine-tuning stores); a multi-turn prompt then carries it after earlier answers

Besides system/user/assistant, a conversation may hold an "input" message right after a user
message: the extra context of an Alpaca record. A template with a format for "input" writes it as
its own section; any other template appends it to the user message, separated by a blank line.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

TEMPLATE_FILENAME = "chat_template.json"
PLACEHOLDERS = {"role", "Role", "content"}
SUPERVISED_ROLE = "assistant"
INPUT_ROLE = "input"

Message = dict[str, str]


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    message: str
    generation_prompt: str
    stop: tuple[str, ...] = ()
    role_messages: dict[str, str] = field(default_factory=dict, hash=False)
    default_system: str = ""
    eot_after_answer: bool = False

    def validate(self) -> None:
        for role, message_format in {"": self.message, **self.role_messages}.items():
            names = {name for _, name, _, _ in string.Formatter().parse(message_format) if name is not None}
            if "content" not in names or not names <= PLACEHOLDERS:
                where = f"the {role!r} message" if role else "message"
                raise ValueError(f"chat template {self.name!r}: {where} must use {{content}} and only "
                                 f"{sorted(PLACEHOLDERS)}, got {message_format!r}")

    def message_format(self, role: str) -> str:
        """The format string that writes a message of this role."""
        return self.role_messages.get(role, self.message)


CHATML = ChatTemplate(
    name="chatml",
    message="<|im_start|>{role}\n{content}<|im_end|>\n",
    generation_prompt="<|im_start|>assistant\n",
    stop=("<|im_end|>",),
)
# Needs no special tokens, so even a model trained only on plain dialogue text can follow it.
PLAIN = ChatTemplate(
    name="plain",
    message="{Role}: {content}\n",
    generation_prompt="Assistant:",
    stop=("\nUser:",),
)
# The Stanford Alpaca prompt. Stanford words the first sentence differently when a record has an
# input ("..., paired with an input that provides further context."); a template is plain data and
# cannot branch, so lmforge uses the no-input sentence for both. Train and generate with the same
# template and the difference does not matter.
ALPACA = ChatTemplate(
    name="alpaca",
    message="### {Role}:\n{content}\n\n",
    generation_prompt="### Response:\n",
    stop=("### Instruction:",),
    role_messages={
        "system": "{content}\n\n",
        "user": "### Instruction:\n{content}\n\n",
        INPUT_ROLE: "### Input:\n{content}\n\n",
        "assistant": "### Response:\n{content}\n\n",
    },
    default_system="Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.",
)
# The messages' text exactly as written, nothing added: for prompt/completion data whose prompts
# already carry their own format (e.g. "Q: ...\nA:"); the model learns to continue after the prompt.
RAW = ChatTemplate(name="raw", message="{content}", generation_prompt="")
TEMPLATES = {template.name: template for template in (CHATML, PLAIN, ALPACA, RAW)}


class Segment(NamedTuple):
    """A piece of rendered text, and whether the model is trained to produce it."""

    text: str
    supervised: bool


def render(messages: list[Message], template: ChatTemplate, add_generation_prompt: bool = True) -> str:
    """The conversation as one prompt text; messages are {"role": ..., "content": ...} dicts."""
    text = "".join(segment.text for segment in render_for_training(messages, template))
    return text + template.generation_prompt if add_generation_prompt else text


def render_for_training(messages: list[Message], template: ChatTemplate) -> list[Segment]:
    """The conversation as consecutive segments; joined, they are `render(..., add_generation_prompt=False)`.

    Each assistant message gives an unsupervised segment (the generation prompt: the model is
    given it) and a supervised one (all the model writes after it: the answer and the text that
    ends the turn). Every other message is one unsupervised segment.
    """
    segments = []
    for message in _with_default_system(_fold_inputs(messages, template), template):
        if message["role"] == SUPERVISED_ROLE:
            segments.extend(_assistant_segments(message["content"], template))
        else:
            segments.append(Segment(_format_message(message, template), supervised=False))
    return segments


def _format_message(message: Message, template: ChatTemplate, content: str | None = None) -> str:
    role = message["role"]
    content = message["content"] if content is None else content
    return template.message_format(role).format(role=role, Role=role.capitalize(), content=content)


def _assistant_segments(content: str, template: ChatTemplate) -> list[Segment]:
    # Format with a marker instead of the content, to find where the content goes. (Looking for the
    # content itself could hit a copy of it inside the template's own text.)
    marker = "\x00content\x00"
    before, after = _format_message({"role": SUPERVISED_ROLE, "content": marker}, template).split(marker, 1)
    # At generation time the prompt ends with the generation prompt and the model writes the rest,
    # e.g. PLAIN's "Assistant:" and then " Hello.\n". Training supervises exactly that rest.
    prompt = template.generation_prompt if before.startswith(template.generation_prompt) else before
    segments = [Segment(prompt, supervised=False)] if prompt else []
    return segments + [Segment(before[len(prompt):] + content + after, supervised=True)]


def _fold_inputs(messages: list[Message], template: ChatTemplate) -> list[Message]:
    """Append each "input" message to the user message before it, unless the template writes inputs itself."""
    if INPUT_ROLE in template.role_messages:
        return list(messages)
    folded: list[Message] = []
    for message in messages:
        if message["role"] == INPUT_ROLE and folded and folded[-1]["role"] == "user":
            folded[-1] = {"role": "user", "content": f"{folded[-1]['content']}\n\n{message['content']}"}
        elif message["role"] == INPUT_ROLE:
            folded.append({"role": "user", "content": message["content"]})
        else:
            folded.append(message)
    return folded


def _with_default_system(messages: list[Message], template: ChatTemplate) -> list[Message]:
    if not template.default_system or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": template.default_system}, *messages]


def jinja_chat_template(template: ChatTemplate, eot_token: str = "") -> str:
    """The template in Hugging Face's format: Jinja source for tokenizer_config.json's `chat_template`.

    `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)` then gives
    `render(messages, template)`, with `eot_token` after each answer when the template has
    eot_after_answer (a tokenizer reads that string as the end-of-text token). "input" messages
    (Alpaca records) are not folded into the user message the way lmforge's own rendering does.
    """
    def message(role_format: str) -> str:
        # A Python format string as Jinja output: literal parts as string literals, fields as expressions.
        parts = []
        for literal, name, _, _ in string.Formatter().parse(role_format):
            if literal:
                parts.append("{{ " + json.dumps(literal) + " }}")
            if name is not None:
                parts.append("{{ " + _JINJA_FIELDS[name] + " }}")
        return "".join(parts)

    lines = []
    if template.default_system:
        default = {"role": "system", "content": template.default_system}
        lines += ["{%- if not messages or messages[0]['role'] != 'system' -%}",
                  "{{ " + json.dumps(_format_message(default, template)) + " }}", "{%- endif -%}"]
    lines.append("{%- for message in messages -%}")
    for i, (role, role_format) in enumerate(template.role_messages.items()):
        lines += ["{%- " + ("if" if i == 0 else "elif") + f" message['role'] == {json.dumps(role)} -%}}",
                  message(role_format)]
    lines += (["{%- else -%}", message(template.message), "{%- endif -%}"] if template.role_messages
              else [message(template.message)])
    if template.eot_after_answer and eot_token:
        lines += [f"{{%- if message['role'] == {json.dumps(SUPERVISED_ROLE)} -%}}",
                  "{{ " + json.dumps(eot_token) + " }}", "{%- endif -%}"]
    lines.append("{%- endfor -%}")
    if template.generation_prompt:
        lines += ["{%- if add_generation_prompt -%}", "{{ " + json.dumps(template.generation_prompt) + " }}",
                  "{%- endif -%}"]
    return "\n".join(lines)


_JINJA_FIELDS = {"role": "message['role']", "Role": "message['role'] | capitalize", "content": "message['content']"}


def save_chat_template(ckpt_dir: str | Path, template: ChatTemplate) -> Path:
    """Store `template` with a checkpoint, so that chat and serve use it by default."""
    template.validate()
    data = asdict(template)
    # Optional fields are left out when unused: older readers know only the rest.
    for optional in ("role_messages", "default_system", "eot_after_answer"):
        if not data[optional]:
            del data[optional]
    path = Path(ckpt_dir) / TEMPLATE_FILENAME
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def load_chat_template(ckpt_dir: str | Path) -> ChatTemplate:
    """The template stored with a checkpoint, or ChatML when it has none."""
    path = Path(ckpt_dir) / TEMPLATE_FILENAME
    if not path.is_file():
        return CHATML
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        template = ChatTemplate(name=data["name"], message=data["message"],
                                generation_prompt=data["generation_prompt"], stop=tuple(data.get("stop", ())),
                                role_messages=dict(data.get("role_messages", {})),
                                default_system=data.get("default_system", ""),
                                eot_after_answer=bool(data.get("eot_after_answer", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected an object with name, message, generation_prompt and stop "
                         "(and optionally role_messages, default_system and eot_after_answer)") from exc
    template.validate()
    return template
