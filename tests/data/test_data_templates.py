"""Chat templates as training data: Alpaca's prompt, "input" messages, and which text is supervised."""

import json

import pytest

from lmforge.data.templates import ALPACA, CHATML, PLAIN, RAW, TEMPLATES, ChatTemplate, Segment, \
    load_chat_template, render, render_for_training, save_chat_template

STANFORD_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                     "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "How are you?"},
    {"role": "assistant", "content": "Fine."},
]


def test_alpaca_renders_the_stanford_prompt():
    assert render([{"role": "user", "content": "Name a colour."}], ALPACA) == STANFORD_NO_INPUT


def test_an_input_message_is_its_own_alpaca_section_and_joins_the_user_message_elsewhere():
    conversation = [{"role": "user", "content": "Add them."}, {"role": "input", "content": "2, 3"}]
    assert render(conversation, ALPACA).endswith("### Instruction:\nAdd them.\n\n### Input:\n2, 3\n\n### Response:\n")
    assert render(conversation, CHATML) == ("<|im_start|>user\nAdd them.\n\n2, 3<|im_end|>\n"
                                            "<|im_start|>assistant\n")


def test_a_conversation_with_its_own_system_message_replaces_the_default_one():
    text = render([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}], ALPACA)
    assert text == "Answer in French.\n\n### Instruction:\nHi\n\n### Response:\n"


def test_chatml_supervises_only_the_assistant_answers_and_their_turn_ends():
    segments = render_for_training(MULTI_TURN, CHATML)
    assert [s.text for s in segments if s.supervised] == ["Hello.<|im_end|>\n", "Fine.<|im_end|>\n"]
    unsupervised = "".join(s.text for s in segments if not s.supervised)
    assert "Be brief." in unsupervised and "How are you?" in unsupervised
    assert Segment("<|im_start|>assistant\n", False) in segments  # the generation prompt is given, not learnt


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=list(TEMPLATES))
def test_segments_join_to_the_rendered_text(template):
    segments = render_for_training(MULTI_TURN, template)
    assert "".join(s.text for s in segments) == render(MULTI_TURN, template, add_generation_prompt=False)


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=list(TEMPLATES))
def test_the_text_before_each_answer_is_exactly_the_prompt_the_model_gets_when_generating(template):
    segments = render_for_training(MULTI_TURN, template)
    answer_starts = [i for i, s in enumerate(segments) if s.supervised]
    assistant_turns = [i for i, m in enumerate(MULTI_TURN) if m["role"] == "assistant"]
    for segment_index, turn in zip(answer_starts, assistant_turns, strict=True):
        before = "".join(s.text for s in segments[:segment_index])
        assert before == render(MULTI_TURN[:turn], template)


def test_plain_supervises_the_space_the_model_writes_after_the_generation_prompt():
    segments = render_for_training(MULTI_TURN[1:3], PLAIN)
    assert segments == [Segment("User: Hi\n", False), Segment("Assistant:", False), Segment(" Hello.\n", True)]


def test_raw_keeps_prompt_and_completion_exactly():
    segments = render_for_training([{"role": "user", "content": "Q: 2+2?\nA:"},
                                    {"role": "assistant", "content": " 4"}], RAW)
    assert segments == [Segment("Q: 2+2?\nA:", False), Segment(" 4", True)]


def test_new_template_fields_round_trip_and_old_files_stay_unchanged(tmp_path):
    save_chat_template(tmp_path, ALPACA)
    assert load_chat_template(tmp_path) == ALPACA
    save_chat_template(tmp_path, CHATML)
    assert set(json.loads((tmp_path / "chat_template.json").read_text())) == {"name", "message",
                                                                            "generation_prompt", "stop"}
    assert load_chat_template(tmp_path) == CHATML


def test_a_role_format_without_content_is_rejected():
    broken = ChatTemplate("x", "{role}: {content}\n", "", role_messages={"user": "{Role} said nothing\n"})
    with pytest.raises(ValueError, match="'user' message must use"):
        broken.validate()


def test_generate_chat_still_exports_the_templates():
    from lmforge.generate import chat

    assert chat.ALPACA is ALPACA and chat.TEMPLATES is TEMPLATES and chat.render is render
