"""Chat templates (exact strings, stored with a checkpoint) and ChatSession's history."""

import json

import pytest

from dataclasses import replace

from lmforge.data.sft import tokenize_conversation
from lmforge.generate.chat import CHATML, PLAIN, ChatSession, ChatTemplate, chat_prompt_ids, load_chat_template, \
    render, save_chat_template
from lmforge.generate.params import SamplingParams
from lmforge.tokenizer import CharTokenizer
from lmforge.train.model_files import with_chat_template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi {there}"},  # braces in content are text, not placeholders
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
]


def test_chatml_rendering():
    assert render(CONVERSATION, CHATML) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi {there}<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_plain_rendering_and_no_generation_prompt():
    expected = "System: Be brief.\nUser: Hi {there}\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert render(CONVERSATION, PLAIN) == expected
    assert render(CONVERSATION[:2], PLAIN, add_generation_prompt=False) == "System: Be brief.\nUser: Hi {there}\n"


def test_template_saved_with_a_checkpoint_is_loaded_back(tmp_path):
    assert load_chat_template(tmp_path) == CHATML  # nothing stored: ChatML
    mine = ChatTemplate("mine", "### {Role}\n{content}\n", "### Assistant\n", ("###",))
    path = save_chat_template(tmp_path, mine)
    assert json.loads(path.read_text()) == {"name": "mine", "message": "### {Role}\n{content}\n",
                                            "generation_prompt": "### Assistant\n", "stop": ["###"]}
    assert load_chat_template(tmp_path) == mine


@pytest.mark.parametrize("stored", [
    {"name": "x", "message": "{role}: no content\n", "generation_prompt": "", "stop": []},
    {"name": "x", "message": "{speaker}: {content}\n", "generation_prompt": "", "stop": []},
    {"name": "x", "message": "{content}"},
])
def test_a_broken_template_file_is_rejected(tmp_path, stored):
    (tmp_path / "chat_template.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="chat_template.json|message must use"):
        load_chat_template(tmp_path)


CHARS = CharTokenizer.train(["<|im_start|>|im_end|> system user assistant Be brief kind. Hi {there} Hello! Bye "
                             "How are you? Fine. Tell me a story Once upon a time SUAH:\n"])


class ScriptedEngine:
    """Stands in for Engine: answers with fixed replies and records every prompt and its params."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = []
        self.tokenizer = CHARS

    def stream(self, prompt, params):
        self.calls.append((prompt, params))
        yield from self.replies.pop(0)


def test_session_sends_the_whole_history_and_stores_replies():
    engine = ScriptedEngine([" Hel", "lo! "], ["Fine."])
    session = ChatSession(engine, PLAIN, SamplingParams(stop=["END"]), system="Be kind.")
    assert "".join(session.reply("Hi")) == " Hello! "
    assert "".join(session.reply("How are you?")) == "Fine."
    prompt_ids = engine.calls[1][0]
    assert CHARS.decode(prompt_ids) == "System: Be kind.\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    assert engine.calls[1][1].stop == ["END", "\nUser:"]  # the caller's stop strings, then the template's
    assert session.messages[-1] == {"role": "assistant", "content": "Fine."}


def test_reset_keeps_only_the_system_message():
    session = ChatSession(ScriptedEngine(["Yes."]), CHATML, SamplingParams(), system="Be kind.")
    list(session.reply("Hi"))
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be kind."}]
    assert ChatSession(ScriptedEngine(), CHATML, SamplingParams()).messages == []


def test_a_reply_cut_short_is_still_remembered():
    session = ChatSession(ScriptedEngine(["Once", " upon", " a time"]), CHATML, SamplingParams())
    stream = session.reply("Tell me a story")
    next(stream)
    stream.close()  # what Ctrl-C in `lmforge chat` does to the generator
    assert session.messages[-2:] == [{"role": "user", "content": "Tell me a story"},
                                     {"role": "assistant", "content": "Once"}]


def test_a_stored_template_records_that_answers_ended_with_end_of_text(tmp_path):
    tuned = with_chat_template(files=None, template=CHATML).template  # what fine-tuning stores
    assert tuned.eot_after_answer and not CHATML.eot_after_answer
    save_chat_template(tmp_path, tuned)
    assert load_chat_template(tmp_path) == tuned
    assert json.loads((tmp_path / "chat_template.json").read_text())["eot_after_answer"] is True


def test_prompt_ids_follow_the_training_format_for_instruction_tuned_models():
    # Any model: the rendered text, encoded.
    assert chat_prompt_ids(CONVERSATION, CHATML, CHARS) == CHARS.encode(render(CONVERSATION, CHATML))
    # A model tuned by lmforge saw end-of-text after every answer, each segment encoded on its own.
    tuned = replace(CHATML, eot_after_answer=True)
    ids = chat_prompt_ids(CONVERSATION, tuned, CHARS)
    history = tokenize_conversation(CONVERSATION, CHARS, tuned).input_ids
    assert ids == history + CHARS.encode("<|im_start|>assistant\n")
    answer_end = CHARS.encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi {there}<|im_end|>\n"
                              "<|im_start|>assistant\nHello.<|im_end|>\n")
    assert ids[:len(answer_end)] == answer_end and ids[len(answer_end)] == CHARS.eot_id
    assert ids.count(CHARS.eot_id) == 1  # one earlier answer, one end-of-text


def test_session_with_a_tuned_template_puts_end_of_text_after_earlier_answers():
    engine = ScriptedEngine(["Hello!"], ["Fine."])
    session = ChatSession(engine, replace(CHATML, eot_after_answer=True), SamplingParams())
    list(session.reply("Hi"))
    list(session.reply("How are you?"))
    first, second = (prompt for prompt, _ in engine.calls)
    assert CHARS.eot_id not in first
    assert second.count(CHARS.eot_id) == 1
    assert CHARS.decode(second).replace(CHARS.decode([CHARS.eot_id]), "") == render(session.messages[:-1], CHATML)
