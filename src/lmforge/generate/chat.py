"""Chat on top of a text-continuation model: chat templates, and a session that keeps the history.

A language model only continues text. To make it "chat", the conversation is written out as one
text in a fixed format (the chat template), ending with the start of the assistant's turn; the
model continues from there, and generation stops at the string that ends a turn. A model answers
well only in the format it was fine-tuned on, so the template is stored next to the checkpoint
(`chat_template.json`).

A template is data, not code:

    message            how one message is written; {role} is the role as given ("user"),
                       {Role} the same capitalised ("User"), {content} the text
    generation_prompt  appended after the last message to start the assistant's reply
    stop               strings that end the reply (not included in it)
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .params import SamplingParams

if TYPE_CHECKING:  # only for type hints: the templates stay importable without loading torch
    from .engine import Engine

TEMPLATE_FILENAME = "chat_template.json"
PLACEHOLDERS = {"role", "Role", "content"}


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    message: str
    generation_prompt: str
    stop: tuple[str, ...] = ()

    def validate(self) -> None:
        names = {name for _, name, _, _ in string.Formatter().parse(self.message) if name is not None}
        if "content" not in names or not names <= PLACEHOLDERS:
            raise ValueError(f"chat template {self.name!r}: message must use {{content}} and only "
                             f"{sorted(PLACEHOLDERS)}, got {self.message!r}")


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
TEMPLATES = {template.name: template for template in (CHATML, PLAIN)}


def render(messages: list[dict[str, str]], template: ChatTemplate, add_generation_prompt: bool = True) -> str:
    """The conversation as one prompt text; messages are {"role": ..., "content": ...} dicts."""
    text = "".join(template.message.format(role=m["role"], Role=m["role"].capitalize(), content=m["content"])
                   for m in messages)
    return text + template.generation_prompt if add_generation_prompt else text


def save_chat_template(ckpt_dir: str | Path, template: ChatTemplate) -> Path:
    """Store `template` with a checkpoint, so that chat and serve use it by default."""
    template.validate()
    path = Path(ckpt_dir) / TEMPLATE_FILENAME
    path.write_text(json.dumps(asdict(template), indent=2) + "\n", encoding="utf-8")
    return path


def load_chat_template(ckpt_dir: str | Path) -> ChatTemplate:
    """The template stored with a checkpoint, or ChatML when it has none."""
    path = Path(ckpt_dir) / TEMPLATE_FILENAME
    if not path.is_file():
        return CHATML
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        template = ChatTemplate(name=data["name"], message=data["message"],
                                generation_prompt=data["generation_prompt"], stop=tuple(data.get("stop", ())))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected an object with name, message, generation_prompt and stop") from exc
    template.validate()
    return template


class ChatSession:
    """A conversation with one model: remembers every turn and sends the whole history each time.

    The prompt grows with every turn; when it no longer fits the model's context, the engine
    keeps only its most recent tokens, so the oldest turns are forgotten first.
    """

    def __init__(self, engine: Engine, template: ChatTemplate, params: SamplingParams, system: str | None = None):
        self.engine, self.template = engine, template
        self.params = replace(params, stop=[*params.stop, *template.stop])
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the assistant's answer to `user_text`; the answer joins the history once done."""
        self.messages.append({"role": "user", "content": user_text})
        prompt = render(self.messages, self.template)
        pieces: list[str] = []
        try:
            for piece in self.engine.stream(prompt, self.params):
                pieces.append(piece)
                yield piece
        finally:  # also when the caller stops early (Ctrl-C): keep what was said, so turns still alternate
            self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})
