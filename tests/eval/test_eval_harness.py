"""lmforge models in EleutherAI's lm-evaluation-harness, checked against the harness's own Hugging Face model.

The tasks are written by the tests (YAML over local JSONL files): multiple choice, a rolling
log-likelihood and a generation task, so nothing is downloaded. The reference is the harness's `hf`
model (HFLM) on the same weights exported with `lmforge export --format hf`: per-example
log-likelihoods must agree to 1e-4 and the accuracies exactly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lmforge.cli.main import main
from lmforge.generate.engine import Engine
from lmforge.tokenizer import load_tokenizer
from lmforge.model.config import ModelConfig
from lmforge.train.checkpoint import load_model_from_checkpoint, save_checkpoint
from tests.export.gguf_models import GPT2_STYLE, TOKENIZER_TEXTS, bpe_tokenizer, random_gpt, training_text

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lmforge.eval.benchmarks import read_report, run_tasks  # noqa: E402  (needs lm_eval)
from lmforge.eval.harness import LMForgeLM  # noqa: E402

MC_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""

ROLLING_TASK = """task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
"""

GENERATE_TASK = """task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
metric_list:
  - metric: exact_match
"""


def write_tasks(folder) -> None:
    """Three tasks over text of the kinds tokenizers get wrong (accents, code, emoji), with trailing spaces."""
    lines = [line for line in training_text().split("\n") if len(line) > 30][:40] + TOKENIZER_TEXTS
    choice_rows = [{"question": line[:len(line) // 2] + ("  " if i % 3 == 0 else ""),
                    "choices": [line[len(line) // 2:], lines[(i + 7) % len(lines)][-12:], "Zürich 👍", " }"],
                    "answer": 0} for i, line in enumerate(lines[:30])]
    rows = {"choice": choice_rows,
            "rolling": [{"text": "\n".join(lines[i:i + 12])} for i in range(0, 36, 12)],
            "generate": [{"question": line[:20], "answer": line[20:40]} for line in lines[:6]]}
    for name, task in (("choice", MC_TASK), ("rolling", ROLLING_TASK), ("generate", GENERATE_TASK)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[name]), encoding="utf-8")
        (folder / f"tiny_{name}.yaml").write_text(task.format(data=data), encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    # GPT-2 style, a context of 64 tokens: the rolling texts need several windows.
    tokenizer = bpe_tokenizer()
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=64, **GPT2_STYLE)
    checkpoint = save_checkpoint(root / "run", "best", random_gpt(cfg), tokenizer, meta={"step": 1})
    tasks = root / "tasks"
    tasks.mkdir()
    write_tasks(tasks)
    return checkpoint, tasks


def lmforge_lm(checkpoint, batch_size=4) -> LMForgeLM:
    model = load_model_from_checkpoint(checkpoint)
    return LMForgeLM(Engine(model, load_tokenizer(checkpoint)), batch_size=batch_size)


def samples_of(results, task) -> list:
    return sorted(results["samples"][task], key=lambda s: int(s["doc_id"]))


def test_loglikelihoods_and_accuracy_match_the_harness_hf_model(setup, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    checkpoint, tasks = setup
    assert main(["export", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    report, ours = run_tasks(lmforge_lm(checkpoint), ["tiny_choice", "tiny_rolling"], include_path=tasks)
    hf = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=4, dtype="float32")
    theirs = simple_evaluate(model=hf, tasks=["tiny_choice", "tiny_rolling"], task_manager=TaskManager(
        include_path=str(tasks)), log_samples=True, bootstrap_iters=0)
    for task in ("tiny_choice", "tiny_rolling"):
        mine, reference = samples_of(ours, task), samples_of(theirs, task)
        assert len(mine) == len(reference) > 0
        for a, b in zip(mine, reference):
            assert a["arguments"] == b["arguments"]
            for (ll_a, *greedy_a), (ll_b, *greedy_b) in zip(a["filtered_resps"], b["filtered_resps"]) \
                    if task == "tiny_choice" else [(a["filtered_resps"], b["filtered_resps"])]:
                assert ll_a == pytest.approx(ll_b, abs=1e-4, rel=1e-5)
                assert greedy_a == greedy_b
    assert ours["results"]["tiny_choice"]["acc,none"] == theirs["results"]["tiny_choice"]["acc,none"]
    assert ours["results"]["tiny_choice"]["acc_norm,none"] == theirs["results"]["tiny_choice"]["acc_norm,none"]
    choice = {s.metric: s for s in report.scores if s.task == "tiny_choice"}
    assert choice["acc"].chance == pytest.approx(0.25) and choice["acc"].examples == 30
    acc, n = choice["acc"].value, choice["acc"].examples  # the standard error of a mean of 0/1 outcomes
    assert choice["acc"].stderr == pytest.approx(math.sqrt(acc * (1 - acc) / (n - 1)))


def test_generation_task_uses_the_engine_with_stop_strings(setup):
    checkpoint, tasks = setup
    lm = lmforge_lm(checkpoint)
    _, results = run_tasks(lm, ["tiny_generate"], include_path=tasks)
    engine_text = [lm.engine.generate([s["arguments"][0][0]], lm._sampling_params(dict(s["arguments"][0][1])))[0].text
                   for s in samples_of(results, "tiny_generate")]
    produced = [s["resps"][0][0] for s in samples_of(results, "tiny_generate")]
    assert produced == engine_text and all("\n" not in text for text in produced)


def test_batching_and_padding_do_not_change_scores(setup):
    checkpoint, _ = setup
    tokenizer = load_tokenizer(checkpoint)
    pairs = [(tokenizer.encode(text[:n]), tokenizer.encode(text[n:n + 15]))
             for text in TOKENIZER_TEXTS for n in (5, 17)]
    one_by_one = lmforge_lm(checkpoint, batch_size=1).score_pairs(pairs)
    batched = lmforge_lm(checkpoint, batch_size=5).score_pairs(pairs)
    for (a, greedy_a), (b, greedy_b) in zip(one_by_one, batched):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b


def test_plain_reference_for_one_pair(setup):
    """The sum of log-softmax values at the continuation's positions, computed the slow, obvious way."""
    checkpoint, _ = setup
    lm = lmforge_lm(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    context, continuation = tokenizer.encode("ROMEO: What light"), tokenizer.encode(" through yonder")
    expected, greedy = 0.0, True
    ids = context + continuation
    with torch.no_grad():
        for k, token in enumerate(continuation):
            prefix = torch.tensor([ids[:len(context) + k]])
            logprobs = torch.log_softmax(lm.scorer(prefix)[0, -1].float(), -1)
            expected += float(logprobs[token])
            greedy &= int(logprobs.argmax()) == token
    (score, is_greedy), = lm.score_pairs([(context, continuation)])
    assert score == pytest.approx(expected, abs=1e-4) and is_greedy == greedy


def test_long_requests_are_cut_and_reported(setup):
    checkpoint, _ = setup
    lm = lmforge_lm(checkpoint)
    long = list(range(5, 105))  # 100 tokens against a context of 64
    lm.score_pairs([(long, [7, 8, 9]), ([3], long)])
    assert lm.truncated == 2 and lm.truncated_continuations == 1
    report = read_report({"results": {}}, lm.truncated, lm.truncated_continuations, lm.max_length)
    assert any("cut on the left" in w for w in report.warnings)
    assert any("only their last tokens were scored" in w for w in report.warnings)


def fake_results(resps: list[list[float]], acc: float, stderr: float) -> dict:
    samples = [{"doc_id": i, "arguments": [("q", f" c{j}") for j in range(len(r))],
                "resps": [[(ll, False)] for ll in r]} for i, r in enumerate(resps)]
    return {"results": {"t": {"alias": "t", "acc,none": acc, "acc_stderr,none": stderr}}, "samples": {"t": samples}}


def test_warnings_for_chance_and_for_identical_loglikelihoods():
    # A server that drops log-probabilities: every choice scores the same, accuracy sits at chance.
    flat = read_report(fake_results([[0.0, 0.0, 0.0, 0.0]] * 50, acc=0.25, stderr=0.06))
    assert flat.scores[0].chance == pytest.approx(0.25)
    assert any("same log-likelihood" in w for w in flat.warnings)
    assert any("within noise of chance" in w for w in flat.warnings)
    # Two choices per example, clearly above chance with distinct scores: no warning.
    good = read_report(fake_results([[-1.0, -3.0]] * 100, acc=0.9, stderr=0.03))
    assert good.scores[0].chance == pytest.approx(0.5) and good.warnings == []


def test_eval_command_runs_the_shipped_quick_tasks(setup, capsys):
    checkpoint, _ = setup
    code = main(["eval", str(checkpoint), "--tasks", "lmforge-quick", "--limit", "8", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tasks = {s["task"] for s in report["scores"]}
    assert tasks == {"lmforge_shakespeare_last_word", "lmforge_python_keyword", "lmforge_shakespeare_ppl"}
    assert all(s["examples"] == 8 for s in report["scores"] if s["task"] != "lmforge_shakespeare_ppl")
    assert all(s["chance"] == 0.25 for s in report["scores"] if s["metric"] in ("acc", "acc_norm"))


def test_eval_needs_data_or_tasks(setup, capsys):
    checkpoint, _ = setup
    assert main(["eval", str(checkpoint)]) != 0
    assert "--data" in capsys.readouterr().err


def test_a_model_left_in_training_mode_is_scored_without_dropout(setup):
    checkpoint, _ = setup
    tokenizer = load_tokenizer(checkpoint)
    model = load_model_from_checkpoint(checkpoint)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.train()
    lm = LMForgeLM(Engine(model, tokenizer))
    pairs = [(tokenizer.encode("ROMEO: What"), tokenizer.encode(" light"))]
    first, second = lm.score_pairs(pairs), lm.score_pairs(pairs)
    assert first == second and model.training  # deterministic, and the model's mode is given back
    model.eval()
    assert lm.score_pairs(pairs)[0][0] == pytest.approx(first[0][0], abs=1e-5)
