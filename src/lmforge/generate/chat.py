"""Chat on top of a text-continuation model: a session that keeps the history.

A language model only continues text. To make it "chat", the conversation is written out as one
text in a fixed format (the chat template), ending with the start of the assistant's turn; the
model continues from there, and generation stops at the string that ends a turn. The templates
live in `lmforge.data.templates`, because fine-tuning data is rendered with the very same ones;
they are re-exported here so `from lmforge.generate.chat import CHATML` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from lmforge.data.templates import (
    ALPACA,
    CHATML,
    PLAIN,
    RAW,
    TEMPLATE_FILENAME,
    TEMPLATES,
    ChatTemplate,
    load_chat_template,
    render,
    save_chat_template,
)

from .params import SamplingParams

if TYPE_CHECKING:  # only for type hints: importing the engine would load the model code
    from ..tokenizer.base import Tokenizer
    from .engine import TextEngine

__all__ = [
    "ALPACA", "CHATML", "PLAIN", "RAW", "TEMPLATES", "TEMPLATE_FILENAME",
    "ChatSession", "ChatTemplate", "chat_prompt_ids", "load_chat_template", "render", "save_chat_template",
]


def chat_prompt_ids(messages: list[dict[str, str]], template: ChatTemplate, tokenizer: Tokenizer) -> list[int]:
    """The token ids that ask the model for the next answer in this conversation.

    A model instruction-tuned by lmforge saw every answer followed by the end-of-text token, and
    each template segment tokenised on its own (data/sft.py); its prompt is built the same way, so
    a multi-turn conversation looks exactly as in training. Any other model gets the rendered text.
    """
    if not template.eot_after_answer:
        return tokenizer.encode(render(messages, template))
    from lmforge.data.sft import tokenize_conversation  # here: it loads torch, and the CLI imports this module early

    history = tokenize_conversation(messages, tokenizer, template).input_ids
    return history + tokenizer.encode(template.generation_prompt)


class ChatSession:
    """A conversation with one model: remembers every turn and sends the whole history each time.

    The prompt grows with every turn; when it no longer fits the model's context, the engine
    keeps only its most recent tokens, so the oldest turns are forgotten first.
    """

    def __init__(self, engine: TextEngine, template: ChatTemplate, params: SamplingParams, system: str | None = None):
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
        prompt = chat_prompt_ids(self.messages, self.template, self.engine.tokenizer)
        pieces: list[str] = []
        try:
            for piece in self.engine.stream(prompt, self.params):
                pieces.append(piece)
                yield piece
        finally:  # also when the caller stops early (Ctrl-C): keep what was said, so turns still alternate
            self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})
