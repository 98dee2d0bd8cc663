"""Instruction fine-tuning data: loading four formats, the loss mask, pre-flight checks, batching and packing."""

import json
import string
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge.data.sft import IGNORE_INDEX, SFTBatches, SFTExample, drop_unfinished, load_sft_examples, pack_examples, \
    packed_attention_mask, packed_positions, preflight, render_inspection, split_examples, tokenize_conversation
from lmforge.data.templates import CHATML, PLAIN, RAW
from lmforge.tokenizer.char import CharTokenizer
from tests.testdata import INSTRUCTION_DATA

TOKENIZER = CharTokenizer(sorted(set(string.printable)))  # one token per character: easy to count
EOT = TOKENIZER.eot_id

HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Ciao."},
]


def write_json(path: Path, records: list, lines: bool = False) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) if lines else json.dumps(records))
    return path


def supervised_text(example: SFTExample) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


# --- Loading ---


def test_alpaca_records_become_user_input_assistant_conversations(tmp_path):
    path = write_json(tmp_path / "a.json", [{"instruction": "Add.", "input": "2, 3", "output": "5"},
                                            {"instruction": "Greet.", "input": "", "output": "Hi"}])
    assert load_sft_examples(path) == [
        [{"role": "user", "content": "Add."}, {"role": "input", "content": "2, 3"},
         {"role": "assistant", "content": "5"}],
        [{"role": "user", "content": "Greet."}, {"role": "assistant", "content": "Hi"}],
    ]


def test_sharegpt_jsonl_maps_speakers_to_roles(tmp_path):
    record = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                {"from": "gpt", "value": "A"}]}
    conversations = load_sft_examples(write_json(tmp_path / "s.jsonl", [record, record], lines=True))
    assert len(conversations) == 2
    assert [m["role"] for m in conversations[0]] == ["system", "user", "assistant"]


def test_openai_messages_keep_every_turn(tmp_path):
    path = write_json(tmp_path / "m.jsonl", [{"messages": MULTI_TURN}], lines=True)
    assert load_sft_examples(path) == [MULTI_TURN]


def test_prompt_completion_is_a_user_assistant_pair(tmp_path):
    path = write_json(tmp_path / "p.json", [{"prompt": "Q: 1+1?\nA:", "completion": " 2"}])
    assert load_sft_examples(path, format="prompt_completion") == [
        [{"role": "user", "content": "Q: 1+1?\nA:"}, {"role": "assistant", "content": " 2"}]]


def test_a_record_of_another_shape_is_reported_with_file_index_and_keys(tmp_path):
    path = write_json(tmp_path / "bad.json", [{"instruction": "a", "output": "b"}, {"question": "a", "answer": "b"}])
    with pytest.raises(ValueError, match=r"bad\.json: record 1 .*\['answer', 'question'\]"):
        load_sft_examples(path)
    with pytest.raises(ValueError, match=r"record 0 .*any known SFT format"):
        load_sft_examples(write_json(tmp_path / "unknown.json", [{"text": "x"}]))


def test_an_unknown_speaker_and_a_broken_line_are_reported(tmp_path):
    record = {"conversations": [{"from": "robot", "value": "beep"}]}
    with pytest.raises(ValueError, match="record 0 .*unknown speaker 'robot'"):
        load_sft_examples(write_json(tmp_path / "s.json", [record]))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_sft_examples(tmp_path / "broken.jsonl")


def test_real_alpaca_style_instruction_data_loads_as_alpaca():
    records = json.loads(INSTRUCTION_DATA.read_text(encoding="utf-8"))
    assert len(records) == 1100 and all(record.keys() == {"instruction", "input", "output"} for record in records)
    conversations = load_sft_examples(INSTRUCTION_DATA)
    assert len(conversations) == 1100
    assert all(c[0]["role"] == "user" and c[-1]["role"] == "assistant" for c in conversations)
    # An empty "input" adds no message: 775 records are instruction + answer, 325 also carry an input.
    assert Counter(tuple(m["role"] for m in c) for c in conversations) == {
        ("user", "assistant"): 775, ("user", "input", "assistant"): 325}
    first = conversations[0]
    assert first[0]["content"] == "Evaluate the following phrase by transforming it into the spelling given."
    assert first[1]["content"] == "freind --> friend"
    assert first[2]["content"].startswith('The spelling of the given phrase "freind" is incorrect')


# --- Tokenising and masking ---


def test_prompt_tokens_are_masked_and_the_answer_and_end_token_are_trained():
    example = tokenize_conversation(HI, TOKENIZER, CHATML)
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    answer = TOKENIZER.encode("Yo<|im_end|>\n") + [EOT]
    assert example.input_ids == TOKENIZER.encode(prompt) + answer
    assert example.labels == [IGNORE_INDEX] * len(prompt) + answer
    assert not example.truncated


def test_multi_turn_trains_only_the_assistant_turns_each_ending_with_the_end_token():
    example = tokenize_conversation(MULTI_TURN, TOKENIZER, PLAIN)
    assert supervised_text(example) == TOKENIZER.encode(" Hello.\n") + [EOT] + TOKENIZER.encode(" Ciao.\n") + [EOT]
    assert TOKENIZER.decode(t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX) == (
        "System: Be brief.\nUser: Hi\nAssistant:User: Bye\nAssistant:")


def test_without_prompt_masking_every_token_is_trained():
    example = tokenize_conversation(MULTI_TURN, TOKENIZER, CHATML, mask_prompt=False)
    assert example.labels == example.input_ids
    assert example.input_ids.count(EOT) == 2


def test_a_long_conversation_is_cut_from_the_right_and_flagged():
    full = tokenize_conversation(HI, TOKENIZER, RAW)
    assert full.input_ids == TOKENIZER.encode("HiYo") + [EOT]
    cut = tokenize_conversation(HI, TOKENIZER, RAW, max_length=3)
    assert (cut.input_ids, cut.labels, cut.truncated) == (full.input_ids[:3], full.labels[:3], True)


# --- Pre-flight ---


def test_preflight_counts_a_healthy_dataset():
    examples = [tokenize_conversation(HI, TOKENIZER, RAW), tokenize_conversation(MULTI_TURN, TOKENIZER, RAW)]
    report = preflight(examples, TOKENIZER, max_length=100)
    assert (report.examples, report.truncated) == (2, 0)
    assert report.tokens == 5 + len("Be brief.HiHello.ByeCiao.") + 2
    assert report.supervised_tokens == 3 + len("Hello.Ciao.") + 2
    assert report.supervised_share == pytest.approx(report.supervised_tokens / report.tokens)
    assert "2 examples" in report.summary()


def test_preflight_rejects_an_example_with_nothing_to_learn():
    no_answer = [{"role": "user", "content": "Hello?"}]
    examples = [tokenize_conversation(c, TOKENIZER, CHATML) for c in (HI, no_answer, no_answer)]
    with pytest.raises(ValueError, match="2 of 3 examples have no supervised token.*first is example 1"):
        preflight(examples, TOKENIZER, max_length=100)


def test_preflight_rejects_an_answer_cut_before_its_end_token():
    long_answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x" * 30}]
    examples = [tokenize_conversation(HI, TOKENIZER, RAW)] * 30 + [tokenize_conversation(long_answer, TOKENIZER, RAW)]
    with pytest.raises(ValueError, match="1 of 31 examples do not end with a supervised end-of-text.*example 30"):
        preflight(examples, TOKENIZER, max_length=20)  # 1 of 31 truncated is within the 5% allowed


def test_dropping_unfinished_examples_keeps_only_answers_that_end():
    long_answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "x" * 30}]
    cut = tokenize_conversation(long_answer, TOKENIZER, RAW, max_length=20)
    whole = tokenize_conversation(HI, TOKENIZER, RAW, max_length=20)
    assert drop_unfinished([whole, cut, whole], EOT) == [whole, whole]
    assert preflight(drop_unfinished([whole, cut], EOT), TOKENIZER, max_length=20).examples == 1


def test_preflight_rejects_a_missing_end_token_even_without_truncation():
    no_end = SFTExample(input_ids=[1, 2, 3], labels=[IGNORE_INDEX, 2, 3])
    with pytest.raises(ValueError, match="do not end with a supervised end-of-text"):
        preflight([no_end], TOKENIZER, max_length=10)


def test_preflight_rejects_a_dataset_with_too_many_truncated_examples():
    examples = [tokenize_conversation(HI, TOKENIZER, CHATML, max_length=10) for _ in range(3)]
    with pytest.raises(ValueError, match="3 of 3 examples .* longer than max_length=10"):
        preflight(examples, TOKENIZER, max_length=10)


# --- Inspection ---


def test_inspection_marks_exactly_the_trained_text():
    example = tokenize_conversation(MULTI_TURN[1:], TOKENIZER, PLAIN)
    assert render_inspection(example, TOKENIZER) == (
        "User: Hi\nAssistant:[[ Hello.\n<|endoftext|>]]User: Bye\nAssistant:[[ Ciao.\n<|endoftext|>]]")
    assert render_inspection(example, TOKENIZER, color=True).count("\x1b[32m") == 2


# --- Batches ---


def toy_examples(count: int = 10) -> list[SFTExample]:
    """Examples of different lengths (3 to 3 + count - 1 tokens) whose tokens say which example they are."""
    return [SFTExample(input_ids=[i] * (3 + i), labels=[IGNORE_INDEX] + [i] * (2 + i)) for i in range(count)]


def test_a_batch_is_padded_only_to_its_longest_example_and_y_is_the_shifted_labels():
    examples = toy_examples()
    x, y = SFTBatches(examples, batch_size=3, pad_id=99).next_batch()
    which = x[:, 0].tolist()
    longest = max(len(examples[i].input_ids) for i in which) - 1
    assert x.shape == y.shape == (3, longest) and x.dtype == y.dtype == torch.long
    for row, i in enumerate(which):
        n = len(examples[i].input_ids) - 1
        assert x[row, :n].tolist() == examples[i].input_ids[:-1] and set(x[row, n:].tolist()) <= {99}
        assert y[row, :n].tolist() == examples[i].labels[1:] and set(y[row, n:].tolist()) <= {IGNORE_INDEX}


def epoch_batches(batches: SFTBatches) -> list[list[int]]:
    return [batches.next_batch()[0][:, 0].tolist() for _ in range(batches.batches_per_epoch)]


def test_an_epoch_visits_every_example_once_in_a_seeded_order():
    batches = SFTBatches(toy_examples(), batch_size=4, seed=7)
    first = epoch_batches(batches)
    assert batches.batches_per_epoch == 3 and [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert (batches.epoch, batches.epoch_progress) == (1, 1.0)
    assert epoch_batches(batches) != first  # a new order every epoch
    assert epoch_batches(SFTBatches(toy_examples(), batch_size=4, seed=7)) == first  # same seed, same order


def test_resuming_from_a_state_dict_gives_the_same_batches():
    uninterrupted = SFTBatches(toy_examples(), batch_size=3, seed=1)
    expected = [uninterrupted.next_batch() for _ in range(9)]
    first_run = SFTBatches(toy_examples(), batch_size=3, seed=1)
    for _ in range(5):
        first_run.next_batch()
    resumed = SFTBatches(toy_examples(), batch_size=3, seed=1)
    resumed.load_state_dict(first_run.state_dict())
    for x, y in expected[5:]:
        x2, y2 = resumed.next_batch()
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="cannot resume"):
        resumed.load_state_dict({"epoch": 0, "index": 4})


def test_eval_batches_are_the_examples_in_order_every_time():
    batches = SFTBatches(toy_examples(), batch_size=4, seed=3)
    first = [x[:, 0].tolist() for x, _ in batches.eval_batches()]
    assert first == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and batches.eval_batch_count() == 3
    batches.next_batch()
    assert [x[:, 0].tolist() for x, _ in batches.eval_batches()] == first
    assert len(list(batches.eval_batches(max_batches=2))) == 2


def test_grouping_by_length_wastes_less_padding():
    examples = toy_examples(40)

    def padding(batches):
        return sum((x.numel() - (y != IGNORE_INDEX).sum()).item() for x, y in
                   (batches.next_batch() for _ in range(batches.batches_per_epoch)))

    grouped = SFTBatches(examples, batch_size=4, group_by_length=True)
    assert padding(grouped) < padding(SFTBatches(examples, batch_size=4))
    assert sorted(sum((x[:, 0].tolist() for x, _ in (grouped.next_batch() for _ in range(10))), [])) == list(range(40))


def test_split_examples_is_seeded_and_disjoint():
    train, val = split_examples(list(range(20)), val_fraction=0.25, seed=5)
    assert len(val) == 5 and sorted(train + val) == list(range(20))
    assert split_examples(list(range(20)), 0.25, seed=5) == (train, val)
    assert len(split_examples(list(range(3)), 0.01)[1]) == 1  # a val split is never empty when asked for


# --- Packing ---


def test_best_fit_packing_fills_rows_without_splitting_examples():
    rows = pack_examples([5, 3, 2, 4, 1, 6], capacity=6)
    assert sorted(sum(rows, [])) == list(range(6))
    assert all(sum([5, 3, 2, 4, 1, 6][i] for i in row) <= 6 for row in rows)
    assert len(rows) == 4  # 21 tokens need at least 4 rows of 6


def test_packed_rows_keep_each_examples_targets_and_never_predict_across_a_boundary():
    examples = [tokenize_conversation(c, TOKENIZER, PLAIN, mask_prompt=False) for c in (HI, MULTI_TURN, HI, HI)]
    batches = SFTBatches(examples, batch_size=4, pack=True, block_size=100)
    x, segments, y = next(batches.eval_batches())
    assert x.shape[1] <= 100 and len(batches.rows) < len(examples)
    for row, members in enumerate(batches.rows):
        assert segments[row].max().item() == len(members)
        for number, i in enumerate(members, start=1):
            where = (segments[row] == number).nonzero().flatten()
            inputs, targets = x[row, where].tolist(), y[row, where].tolist()
            unpacked = examples[i]
            if number < len(members):  # the last position predicts the next example's first token: not trained
                assert inputs[-1] == EOT and targets[-1] == IGNORE_INDEX
                inputs, targets = inputs[:-1], targets[:-1]
            assert inputs == unpacked.input_ids[:len(inputs)] and len(inputs) >= len(unpacked.input_ids) - 1
            assert targets == unpacked.labels[1:len(targets) + 1]


def test_packed_positions_restart_for_every_example():
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert packed_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


def test_with_the_segment_mask_a_packed_example_attends_as_if_it_were_alone():
    torch.manual_seed(0)
    segments = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 0]])
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))  # (batch, heads, positions, head dim)
    packed = F.scaled_dot_product_attention(q, k, v, attn_mask=packed_attention_mask(segments))
    alone = F.scaled_dot_product_attention(q[:, :, 3:7], k[:, :, 3:7], v[:, :, 3:7], is_causal=True)
    assert torch.allclose(packed[:, :, 3:7], alone, atol=1e-6)
    assert not packed.isnan().any()  # padding attends to padding: no fully masked row


def test_packing_needs_a_block_size_that_fits_every_example():
    with pytest.raises(ValueError, match="block_size"):
        SFTBatches(toy_examples(), batch_size=2, pack=True)
    with pytest.raises(ValueError, match="max_length=6"):
        SFTBatches(toy_examples(), batch_size=2, pack=True, block_size=5)
