"""`--backend llamacpp`: lmforge's commands with llama.cpp computing the logits of the checkpoint's GGUF export.

The reference is lmforge's PyTorch engine on the same checkpoint: with an f32 file the two compute the
same logits (to ~1e-6, tests/export/test_gguf_llamacpp.py), so greedy text, seeded samples, stop
strings, the server's answers and eval's scores must all agree with it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from lmforge.cli.main import main
from lmforge.generate.chat import CHATML
from lmforge.generate.engine import Engine
from lmforge.generate.params import SamplingParams
from lmforge.tokenizer import CharTokenizer, load_tokenizer
from lmforge.train.checkpoint import load_model_from_checkpoint
from tests.export.gguf_models import bpe_tokenizer, lmforge_checkpoint, random_gpt

llama_cpp = pytest.importorskip("llama_cpp")

from lmforge.export.llamacpp_backend import LlamaCppEngine  # noqa: E402  (needs llama_cpp)

PROMPT = "ROMEO: What light through yonder window breaks?"


@pytest.fixture(scope="module", autouse=True)
def gguf_cache(tmp_path_factory):
    """Every export of this module goes to a cache of its own, never the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMFORGE_GGUF_CACHE", str(tmp_path_factory.mktemp("gguf-cache")))
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Llama-style model with a context of 256 tokens and lmforge's byte-level BPE."""
    return lmforge_checkpoint(tmp_path_factory.mktemp("llamacpp-backend"), "llama", bpe_tokenizer())


@pytest.fixture(scope="module")
def torch_engine(checkpoint):
    return Engine(load_model_from_checkpoint(checkpoint), load_tokenizer(checkpoint))


@pytest.fixture(scope="module")
def f32_engine(checkpoint):
    engine = LlamaCppEngine.from_checkpoint(checkpoint, "f32")
    yield engine
    engine.close()


def test_greedy_text_matches_the_pytorch_engine_past_the_context_window(f32_engine, torch_engine):
    # 300 new tokens after the prompt pass the 256-token context: both engines slide the same way.
    params = SamplingParams(max_new_tokens=300, temperature=0)
    ours, reference = f32_engine.generate([PROMPT], params)[0], torch_engine.generate([PROMPT], params)[0]
    assert len(ours.token_ids) == 300 and ours.finish_reason == "length"
    assert ours.token_ids == reference.token_ids and ours.text == reference.text


@pytest.mark.parametrize("settings", [dict(temperature=0.9, top_k=40, seed=7),
                                      dict(temperature=1.2, top_p=0.9, min_p=0.02, repetition_penalty=1.3, seed=11)])
def test_seeded_sampling_draws_what_the_pytorch_engine_draws(f32_engine, torch_engine, settings):
    params = SamplingParams(max_new_tokens=60, **settings)
    ours, reference = f32_engine.generate([PROMPT], params)[0], torch_engine.generate([PROMPT], params)[0]
    assert ours.token_ids == reference.token_ids
    assert f32_engine.generate([PROMPT], params)[0].token_ids == ours.token_ids  # and again: the seed decides


def test_stop_strings_and_streaming(f32_engine, torch_engine):
    free = f32_engine.generate([PROMPT], SamplingParams(max_new_tokens=40, temperature=0))[0].text
    stop = free[10:13]  # a piece of the text that really comes out
    params = SamplingParams(max_new_tokens=40, temperature=0, stop=[stop])
    finished = []
    pieces = list(f32_engine.stream(PROMPT, params, finished))
    assert "".join(pieces) == free[:free.index(stop)] == torch_engine.generate([PROMPT], params)[0].text
    assert finished[0].finish_reason == "stop" and all(pieces)


def test_several_prompts_run_one_after_another(f32_engine, torch_engine):
    prompts = ["Hello", PROMPT, ""]
    params = SamplingParams(max_new_tokens=20, temperature=0)
    assert f32_engine.max_batch_size == 1
    ours = f32_engine.generate(prompts, params)
    assert [c.token_ids for c in ours] == [c.token_ids for c in torch_engine.generate(prompts, params)]
    with pytest.raises(ValueError, match="at most 1"):
        list(f32_engine.stream_batch(["a", "b"], [params, params], []))


def test_q8_0_file_is_cached_and_stays_close(checkpoint, torch_engine):
    first = LlamaCppEngine.from_checkpoint(checkpoint, "q8_0")
    second = LlamaCppEngine.from_checkpoint(checkpoint, "q8_0")
    try:
        assert first.gguf_file == second.gguf_file and first.gguf_file.name.endswith("-q8_0.gguf")
        # The first token's logits, as the engine samples them, against the PyTorch model's: within the
        # q8_0 bound of the export tests (10% of the largest logit; ~5% measured on these random weights).
        first.generate([PROMPT], SamplingParams(max_new_tokens=1, temperature=0))
        ours = first.last_logits()
        ids = torch.tensor([torch_engine.prompt_ids(PROMPT)])
        with torch.no_grad():
            reference = torch_engine.model(ids)[0, -1]
        assert (ours - reference).abs().max() <= 0.1 * reference.abs().max()
        assert (ours - reference).abs().max() > 1e-4 * reference.abs().max()  # really 8-bit: f32 matches to ~1e-6
    finally:
        first.close()
        second.close()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_command_with_the_llamacpp_backend(checkpoint, capsys):
    flags = ["--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "24", "--json"]
    code, out, err = run_cli(capsys, "generate", checkpoint, *flags, "--backend", "llamacpp", "--quant", "f32")
    assert code == 0 and "llama.cpp backend" in err and "-f32.gguf" in err
    _, reference, _ = run_cli(capsys, "generate", checkpoint, *flags)
    assert json.loads(out) == json.loads(reference)


@pytest.mark.parametrize("flags, message", [(["--backend", "llamacpp", "--quantize", "int8"], "--quantize"),
                                            (["--backend", "llamacpp", "--compile"], "--compile"),
                                            (["--quant", "q8_0"], "--backend llamacpp")])
def test_flags_of_the_other_backend_are_refused(checkpoint, capsys, flags, message):
    code, _, err = run_cli(capsys, "generate", checkpoint, "--prompt", "hi", *flags)
    assert code != 0 and message in err


def test_char_tokenizer_checkpoint_is_refused_with_a_reason(tmp_path, capsys):
    from lmforge.model.config import ModelConfig
    from lmforge.train.checkpoint import save_checkpoint

    tokenizer = CharTokenizer.train(["hello world"])
    model = random_gpt(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32))
    ckpt = save_checkpoint(tmp_path / "run", "best", model, tokenizer, meta={"step": 1})
    code, _, err = run_cli(capsys, "generate", ckpt, "--prompt", "hi", "--backend", "llamacpp")
    assert code != 0 and "char" in err.lower()


def test_server_answers_through_llama_cpp(f32_engine, torch_engine):
    import openai

    from lmforge.generate.server import create_app, running_in_background

    greedy = dict(model="tiny", max_tokens=16, temperature=0)
    expected = torch_engine.generate(["Hello", PROMPT], SamplingParams(max_new_tokens=16, temperature=0))
    with running_in_background(create_app(f32_engine, "tiny", CHATML)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with ThreadPoolExecutor(4) as pool:  # concurrent requests: served one after another, none lost
            answers = list(pool.map(lambda p: client.completions.create(prompt=p, **greedy).choices[0].text,
                                    ["Hello", PROMPT, "Hello", PROMPT]))
        streamed = "".join(chunk.choices[0].text for chunk in
                           client.completions.create(prompt=PROMPT, stream=True, **greedy))
    assert answers == [c.text for c in expected] * 2
    assert streamed == expected[1].text


def test_eval_command_scores_the_gguf_file_like_the_pytorch_model(checkpoint, tmp_path, capsys):
    from tests.export.gguf_models import training_text

    text = tmp_path / "heldout.txt"
    text.write_text(training_text()[-6000:], encoding="utf-8")
    args = ["eval", checkpoint, "--data", text, "--max-batches", "2", "--batch-size", "2", "--json"]
    code, out, _ = run_cli(capsys, *args, "--backend", "llamacpp", "--quant", "f32")
    assert code == 0
    ours = json.loads(out.strip().splitlines()[-1])
    _, out, _ = run_cli(capsys, *args)
    reference = json.loads(out.strip().splitlines()[-1])
    assert ours["backend"] == "llamacpp f32" and ours["tokens"] == reference["tokens"] > 0
    assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-4)
    assert ours["accuracy"] == pytest.approx(reference["accuracy"], abs=1 / ours["tokens"])


def test_token_logprobs_match_the_pytorch_engine_past_the_window(f32_engine, torch_engine):
    ids = torch_engine.tokenizer.encode(PROMPT * 12)[:300]  # past the 256-token context: windows slide
    ours, reference = f32_engine.token_logprobs(ids), torch_engine.token_logprobs(ids)
    assert ours.shape == reference.shape == (299, torch_engine.tokenizer.vocab_size)
    assert (ours - reference).abs().max() < 1e-3  # log-softmax over ~1e-6-close logits
