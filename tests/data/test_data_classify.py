"""Labelled texts for classification: file formats, stratified splits, balancing and (x, last_index, label) batches."""

import json
from collections import Counter

import pytest
import torch

from lmforge.data.classify import ClassifyBatches, balance, class_weights, load_labelled, stratified_split
from tests.testdata import SMS_SPAM

SMS_SAMPLE = (
    "ham\tGo until jurong point, crazy.. Available only in bugis\n"
    "ham\tOk lar... Joking wif u oni...\n"
    'spam\tFree entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. "Text" FA to 87121\n'
    "ham\tU dun say so early hor... U c already then say...\n"
)


def test_a_headerless_tsv_like_sms_spam_is_read_label_first(tmp_path):
    (tmp_path / "SMSSpamCollection").write_text(SMS_SAMPLE)
    data = load_labelled(tmp_path / "SMSSpamCollection")
    assert data.labels == ["ham", "ham", "spam", "ham"]
    assert data.classes == ["ham", "spam"] and data.label_ids() == [0, 0, 1, 0]
    assert data.texts[2].endswith('"Text" FA to 87121')  # quotes are text in a TSV, not CSV quoting
    assert data.texts[0] == "Go until jurong point, crazy.. Available only in bugis"


def test_a_headerless_tsv_with_the_label_last_is_recognised(tmp_path):
    (tmp_path / "reviews.tsv").write_text("great film\tpos\nawful\tneg\nloved it\tpos\nboring\tneg\n")
    texts, labels, classes = load_labelled(tmp_path / "reviews.tsv")
    assert texts[0] == "great film" and labels == ["pos", "neg", "pos", "neg"] and classes == ["neg", "pos"]


def test_csv_with_a_header_finds_the_columns_by_name(tmp_path):
    (tmp_path / "data.csv").write_text('id,sentence,Label\n1,"Hello, world",greeting\n2,Go away,rude\n')
    data = load_labelled(tmp_path / "data.csv")
    assert data.texts == ["Hello, world", "Go away"] and data.labels == ["greeting", "rude"]


def test_jsonl_and_explicit_field_names(tmp_path):
    records = [{"body": "win money", "kind": 1}, {"body": "see you", "kind": 0}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    data = load_labelled(tmp_path / "d.jsonl", text_field="body", label_field="kind")
    assert data.texts == ["win money", "see you"] and data.labels == ["1", "0"] and data.classes == ["0", "1"]
    with pytest.raises(ValueError, match=r"no text column among \['body', 'kind'\].*text_field"):
        load_labelled(tmp_path / "d.jsonl")


def test_a_named_column_that_is_missing_is_reported(tmp_path):
    (tmp_path / "data.tsv").write_text("text\tlabel\nhi\tx\n")
    with pytest.raises(ValueError, match="no column 'category'"):
        load_labelled(tmp_path / "data.tsv", label_field="category")


def test_the_real_sms_spam_collection_has_two_classes_and_about_13_percent_spam():
    data = load_labelled(SMS_SPAM)
    assert len(data.texts) == 5574 and data.classes == ["ham", "spam"]
    assert data.labels.count("spam") / len(data.labels) == pytest.approx(0.134, abs=0.005)


def test_stratified_split_keeps_each_class_share():
    labels = ["a"] * 80 + ["b"] * 20
    train, val = stratified_split(100, labels, val_fraction=0.25, seed=3)
    assert Counter(labels[i] for i in val) == {"a": 20, "b": 5}
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert stratified_split(100, labels, 0.25, seed=3) == (train, val)
    _, tiny_val = stratified_split(4, ["a", "a", "a", "b"], val_fraction=0.1)
    assert [i for i in tiny_val if i < 3] and 3 not in tiny_val  # a class of one stays in train


def test_downsampling_keeps_as_many_of_each_class_as_the_rarest_has():
    labels = [0] * 7 + [1] * 3
    kept = balance(range(10), labels, mode="downsample", seed=1)
    assert Counter(labels[i] for i in kept) == {0: 3, 1: 3} and set(range(7, 10)) <= set(kept)
    assert balance([4, 8], labels) == [4, 8]


def test_class_weights_are_inverse_frequency_averaging_one_over_the_examples():
    labels = [0, 0, 0, 1]
    weights = class_weights(labels, num_classes=3)  # class 2 has no example
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])  # 4 / (2 classes present * count)
    assert sum(weights[label] for label in labels).item() == pytest.approx(len(labels))


def test_a_batch_holds_padded_texts_the_last_real_token_and_the_label():
    tokens = [[5, 6, 7], [8], [9, 10, 11, 12, 13, 14]]
    batches = ClassifyBatches(tokens, [1, 0, 1], batch_size=3, pad_id=0, max_length=4)
    x, last_index, label = next(batches.eval_batches())
    assert x.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 11, 12]]  # the long text keeps its start
    assert last_index.tolist() == [2, 0, 3] and label.tolist() == [1, 0, 1]
    assert x.dtype == last_index.dtype == label.dtype == torch.long


def test_classify_batches_shuffle_per_epoch_and_resume_exactly():
    tokens, labels = [[i] * (1 + i % 4) for i in range(11)], [i % 2 for i in range(11)]
    batches = ClassifyBatches(tokens, labels, batch_size=4, seed=2)
    expected = [batches.next_batch() for _ in range(7)]
    assert sorted(sum((b[0][:, 0].tolist() for b in expected[:3]), [])) == list(range(11))
    resumed = ClassifyBatches(tokens, labels, batch_size=4, seed=2)
    resumed.load_state_dict({"epoch": 1, "index": 1})
    for batch in expected[4:]:
        assert all(torch.equal(a, b) for a, b in zip(batch, resumed.next_batch()))


def test_an_empty_text_is_rejected():
    with pytest.raises(ValueError, match="text 1 has no tokens"):
        ClassifyBatches([[1], []], [0, 1], batch_size=2)
