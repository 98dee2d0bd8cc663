"""The KV-cached engine: same tokens as the naive loop, batching, sliding, stop strings, streaming, seeds."""

import pytest
import torch

from lmforge.generate.engine import Engine, TextStream, generate_text, generate_tokens, kept_after_slide
from lmforge.generate.params import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.tokenizer import CharTokenizer, GPT2Tokenizer

# Untied embeddings: a tiny random model with tied ones just repeats its last token, a weak test.
TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, tie_embeddings=False)
FAMILIES = {
    "gpt2": dict(TINY),
    "llama": dict(TINY, n_kv_head=2, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False),
}
GREEDY = SamplingParams(temperature=0)
CHARS = CharTokenizer.train(["the quick brown fox jumps over a lazy dog"])


def tiny_model(family: str, vocab_size: int = 50, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**dict(FAMILIES[family], vocab_size=vocab_size, **overrides))).eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@torch.no_grad()
def greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The naive loop: a full forward over the whole window every step, cropped like the engine's slide."""
    block = model.config.block_size
    ids, start = list(prompt), 0
    for _ in range(n):
        if len(ids) - start > block:
            start = len(ids) - kept_after_slide(block)
        ids.append(int(model(torch.tensor([ids[start:]]))[0, -1].argmax()))
    return ids[len(prompt):]


def tokens_of(model: GPT, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """generate_tokens' steps turned into one token list per prompt."""
    return [list(row) for row in zip(*generate_tokens(model, prompts, params))]


# ---- token level --------------------------------------------------------------------------------


def test_cached_greedy_equals_the_no_cache_loop(family):
    model = tiny_model(family)
    prompt = [3, 14, 15, 9, 26]
    params = SamplingParams(temperature=0, max_new_tokens=11)  # fills the 16-token context exactly
    cached = tokens_of(model, [prompt], params)[0]
    assert cached == greedy_without_cache(model, prompt, 11)
    assert len(set(cached)) > 3  # the model does not just repeat one token


def test_left_padded_batch_gives_each_prompt_its_tokens_alone(family):
    model = tiny_model(family, block_size=32)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [7, 8], [30, 31, 32, 33]]
    params = SamplingParams(temperature=0, max_new_tokens=20)  # 9 + 20 tokens: no slide
    batched = tokens_of(model, prompts, params)
    for prompt, row in zip(prompts, batched):
        assert row == tokens_of(model, [prompt], params)[0] == greedy_without_cache(model, prompt, 20)


def test_generation_slides_past_the_context_window(family):
    model = tiny_model(family)
    prompt = [5, 6, 7]
    n = 3 * model.config.block_size
    cached = tokens_of(model, [prompt], SamplingParams(temperature=0, max_new_tokens=n))[0]
    assert len(cached) == n
    assert cached == greedy_without_cache(model, prompt, n)  # identical through every slide


def test_generation_restores_training_mode():
    model = tiny_model("gpt2").train()
    tokens_of(model, [[1, 2]], SamplingParams(temperature=0, max_new_tokens=3))
    assert model.training


# ---- text level: TextStream ---------------------------------------------------------------------


def stream_pieces(text: str, stop: list[str]) -> tuple[list[str], TextStream]:
    tokenizer = GPT2Tokenizer()
    stream = TextStream(tokenizer, stop)
    pieces = [stream.push(token) for token in tokenizer.encode(text) if stream.finish_reason is None]
    if stream.finish_reason is None:
        pieces.append(stream.finish("length"))
    return pieces, stream


def test_streaming_never_splits_a_multibyte_character():
    text = "héllo 😀 wörld 日本語"
    assert "\ufffd" in GPT2Tokenizer().decode(GPT2Tokenizer().encode(" 😀")[:1])  # the emoji spans two tokens
    pieces, stream = stream_pieces(text, stop=[])
    assert not any("\ufffd" in piece for piece in pieces)
    assert "".join(pieces) == stream.text == text
    assert stream.finish_reason == "length"


@pytest.mark.parametrize("stop, expected", [
    ([", the e"], "Hello world"),  # spans the tokens ",", " the", " end"
    (["😀"], "Hello world, the end "),  # a stop string made of one character split over two tokens
    (["near", "zzz", "the end"], "Hello world, "),  # the earliest of several
])
def test_stop_strings_cut_the_text_even_across_tokens(stop, expected):
    pieces, stream = stream_pieces("Hello world, the end 😀 is near", stop)
    assert "".join(pieces) == stream.text == expected
    assert stream.finish_reason == "stop"


def test_text_held_as_a_possible_stop_string_is_released_when_it_is_not():
    tokenizer = GPT2Tokenizer()
    stream = TextStream(tokenizer, ["world peace"])
    assert stream.push(tokenizer.encode("Hello")[0]) == "Hello"
    assert stream.push(tokenizer.encode(" world")[0]) == " "  # "world" might begin "world peace"
    assert stream.push(tokenizer.encode("!")[0]) == "world!"
    assert stream.finish_reason is None


# ---- text level: Engine -------------------------------------------------------------------------


def char_engine(family: str = "gpt2", **overrides) -> Engine:
    return Engine(tiny_model(family, CHARS.vocab_size, **overrides), CHARS)


def test_stream_pieces_join_into_the_generated_text(family):
    engine = char_engine(family)
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
    completion = engine.generate(["the fox"], params)[0]
    assert "".join(engine.stream("the fox", params)) == completion.text
    assert completion.text == CHARS.decode(completion.token_ids)


def test_a_stop_string_spanning_tokens_ends_the_completion(family):
    engine = char_engine(family)
    full = engine.generate(["a dog"], SamplingParams(temperature=0, max_new_tokens=12))[0]
    stop = full.text[4:7]  # three characters: three tokens of the char tokenizer
    cut = engine.generate(["a dog"], SamplingParams(temperature=0, max_new_tokens=12, stop=[stop]))[0]
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.finish_reason == "stop" and full.finish_reason == "length"
    assert "".join(engine.stream("a dog", SamplingParams(temperature=0, max_new_tokens=12, stop=[stop]))) == cut.text


def test_end_of_text_stops_and_is_not_returned():
    engine = char_engine()
    model = engine.model
    # Make end-of-text likely (but not certain) at every step, through a bias on the output head.
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(CHARS.vocab_size))
    model.lm_head.bias.data[CHARS.eot_id] = 2.0
    completion = engine.generate(["the"], SamplingParams(temperature=1.0, max_new_tokens=50, seed=0))[0]
    assert completion.finish_reason == "stop"
    assert 0 < len(completion.token_ids) < 50
    assert CHARS.eot_id not in completion.token_ids
    # ignore_eos (vLLM's): the same draws go on past end-of-text, to the token budget.
    params = SamplingParams(temperature=1.0, max_new_tokens=50, seed=0, ignore_eos=True)
    onward = engine.generate(["the"], params)[0]
    assert onward.finish_reason == "length" and len(onward.token_ids) == 50
    assert onward.token_ids[:len(completion.token_ids) + 1] == [*completion.token_ids, CHARS.eot_id]


def test_batched_generate_matches_one_prompt_at_a_time(family):
    engine = char_engine(family, block_size=32)
    prompts = ["the quick brown fox", "a", "lazy dog"]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    batched = engine.generate(prompts, params)
    assert [c.text for c in batched] == [engine.generate([p], params)[0].text for p in prompts]
    assert [c.prompt_tokens for c in batched] == [19, 1, 8]
    small_batches = Engine(engine.model, CHARS, max_batch_size=2).generate(prompts, params)
    assert [c.text for c in small_batches] == [c.text for c in batched]


def test_same_seed_same_text_different_seed_different_text():
    engine = char_engine()

    def text(seed: int, prompts: list[str] = ["the"]) -> list[str]:
        params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=seed)
        return [c.text for c in engine.generate(prompts, params)]

    assert text(1) == text(1)
    assert text(1) != text(2)
    assert text(1, ["the", "the"]) == text(1) * 2  # each request draws from its own generator


def test_temperature_zero_ignores_the_seed():
    engine = char_engine()
    texts = {engine.generate(["fox"], SamplingParams(temperature=0, max_new_tokens=10, seed=s))[0].text
             for s in (1, 2, None)}
    assert len(texts) == 1


def test_a_prompt_longer_than_the_context_is_truncated_with_a_warning():
    engine = char_engine()
    with pytest.warns(UserWarning, match="longer than the context"):
        completion = engine.generate(["the quick brown fox jumps over"], SamplingParams(max_new_tokens=3))[0]
    assert completion.prompt_tokens == 16
    assert len(completion.token_ids) == 3


def test_zero_new_tokens_and_the_training_loop_helper():
    engine = char_engine()
    empty = engine.generate([""], SamplingParams(max_new_tokens=0))[0]
    assert (empty.text, empty.token_ids, empty.finish_reason) == ("", [], "length")
    text = generate_text(engine.model, CHARS, "the", max_new_tokens=20, temperature=0.8, top_k=5, seed=0)
    assert text == generate_text(engine.model, CHARS, "the", max_new_tokens=20, temperature=0.8, top_k=5, seed=0)
    assert 0 < len(text) <= 20
