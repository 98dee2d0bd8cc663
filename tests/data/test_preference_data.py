"""Preference pairs: the record formats, what is a target (the final answer only), pre-flight, batches."""

import json

import numpy as np
import pytest
import torch

from lmforge.data.preference import (PreferenceBatches, load_preference_pairs, tokenize_answer, tokenize_pairs,
                                     with_reference_logps)
from lmforge.data.templates import TEMPLATES, render
from lmforge.model.chunked_loss import IGNORE_INDEX
from lmforge.tokenizer import CharTokenizer

CHATML = TEMPLATES["chatml"]
TOKENIZER = CharTokenizer.train(["<|im_start|>system user assistant\n<|im_end|> abcdefghijklmnopqrstuvwxyz?.!,"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"])


def write(tmp_path, records, jsonl=False):
    path = tmp_path / ("pairs.jsonl" if jsonl else "pairs.json")
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


def test_every_format_gives_the_same_pair(tmp_path):
    prompt, chosen, rejected = "Say hi.", "Hi there!", "No."
    forms = [
        {"prompt": prompt, "chosen": chosen, "rejected": rejected},
        {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
         "rejected": [{"role": "assistant", "content": rejected}]},
        {"instruction": prompt, "input": "", "chosen": chosen, "rejected": rejected, "output": "ignored"},
        {"chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}],
         "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}]},
    ]
    pairs = [load_preference_pairs(write(tmp_path, [form], jsonl=i % 2 == 1))[0] for i, form in enumerate(forms)]
    assert all(p == pairs[0] for p in pairs)
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == ([{"role": "user", "content": prompt}],
                                                                      chosen, rejected)


def test_bad_records_name_the_record_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not look like preference data"):
        load_preference_pairs(write(tmp_path, [{"text": "x"}]))
    with pytest.raises(ValueError, match="record 1 lacks"):
        load_preference_pairs(write(tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a"}]))
    implicit = {"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "rejected": [{"role": "user", "content": "OTHER"}, {"role": "assistant", "content": "c"}]}
    with pytest.raises(ValueError, match="share every message but the last"):
        load_preference_pairs(write(tmp_path, [implicit]))


def test_only_the_final_answer_and_its_end_of_text_are_targets():
    prompt = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yes."},
              {"role": "user", "content": "And?"}]
    example = tokenize_answer(prompt, "No!", TOKENIZER, CHATML)
    prompt_ids = TOKENIZER.encode(render(prompt, CHATML))  # what generation would be given
    assert example.input_ids[:len(prompt_ids)] == prompt_ids
    targets = [t for t in example.labels if t != IGNORE_INDEX]
    assert TOKENIZER.decode(targets[:-1]) == "No!<|im_end|>\n" and targets[-1] == TOKENIZER.eot_id
    assert example.labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)  # the earlier answer too


def test_preflight_leaves_out_identical_and_empty_pairs_and_refuses_too_many_cut():
    from lmforge.data.preference import PreferencePair

    user = [{"role": "user", "content": "q?"}]
    pairs = [PreferencePair(user, "good answer", "bad"), PreferencePair(user, "same", "same"),
             PreferencePair(user, " ", "bad"), PreferencePair(user, "a" * 200, "b")]
    kept, report = tokenize_pairs(pairs, TOKENIZER, CHATML, max_length=80, max_truncated=0.5)
    assert (report.kept, report.identical, report.empty, report.truncated) == (1, 1, 1, 1)
    assert "1 of 4 pairs kept" in report.summary()
    with pytest.raises(ValueError, match="answer cut at 80 tokens"):
        tokenize_pairs(pairs, TOKENIZER, CHATML, max_length=80, max_truncated=0.0)


def test_batches_put_chosen_rows_first_and_divide_by_the_pairs():
    from lmforge.data.preference import PreferencePair

    user = [{"role": "user", "content": "q?"}]
    pairs, _ = tokenize_pairs([PreferencePair(user, "yes", "no way"), PreferencePair(user, "ok", "nah")],
                              TOKENIZER, CHATML, max_length=100)
    x, y, y_all, ref, count = PreferenceBatches(pairs, 2, pad_id=TOKENIZER.eot_id)._collate(np.arange(2))
    assert x.shape[0] == 4 and count.tolist() == [0, 0]  # the loop counts 2 targets: the mean is over pairs
    for row, side in enumerate([pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected]):
        n = len(side.input_ids) - 1
        assert x[row, :n].tolist() == side.input_ids[:-1]
        assert y[row, :n].tolist() == side.labels[1:] and (y[row, n:] == IGNORE_INDEX).all()
        assert y_all[row, :n].tolist() == side.input_ids[1:]
    filled = with_reference_logps(pairs, lambda x, y: torch.arange(len(x), dtype=torch.float32), batch_size=1)
    assert [p.ref_logps for p in filled] == [(0.0, 1.0), (0.0, 1.0)]  # (chosen, rejected) of each batch of 1
    _, _, _, ref, _ = PreferenceBatches(filled, 2)._collate(np.arange(2))
    assert ref.tolist() == [0.0, 0.0, 1.0, 1.0]
