"""Continuous batching at the token level: sequences that join, wait, read their prompts in chunks, slide and
leave at different rounds each get the tokens they get alone (generate_tokens with one prompt) and, for greedy
ones, what the plain no-cache loop gives."""

import random

import pytest
import torch

from lmforge.generate.continuous import ContinuousBatcher, slots_for_budget
from lmforge.generate.engine import generate_tokens
from lmforge.generate.params import SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT
from lmforge.model.kv_slots import SlotPool, SlotStep

from .test_generate_engine import FAMILIES, greedy_without_cache


def tiny_model(family: str, block_size: int = 16) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**dict(FAMILIES[family], vocab_size=50, block_size=block_size))).eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


def alone(model: GPT, prompt: list[int], params: SamplingParams) -> list[int]:
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    return [step[0] for step in generate_tokens(model, [prompt], params, [generator])]


def random_requests(n: int, block_size: int, seed: int = 0) -> list[tuple[list[int], SamplingParams]]:
    """Prompts of 1..block_size tokens, budgets up to 3 contexts (so sequences slide), mixed sampling."""
    rng = random.Random(seed)
    return [([rng.randrange(50) for _ in range(rng.randint(1, block_size))],
             SamplingParams(max_new_tokens=rng.randint(1, 3 * block_size), temperature=rng.choice([0, 0.9]),
                            top_k=rng.choice([0, 5]), repetition_penalty=rng.choice([1.0, 1.3]), seed=i))
            for i in range(n)]


class Recorder(ContinuousBatcher):
    """Notes what the rounds did: slots moved, slides, rounds with rows decoding beside rows prefilling."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moves = self.slides = self.mixed_rounds = 0
        move, swap = self.pool.move, self.pool.swap
        self.pool.move = lambda *a: (setattr(self, "moves", self.moves + 1), move(*a))
        self.pool.swap = lambda *a: (setattr(self, "moves", self.moves + 1), swap(*a))

    def _slide_full_rows(self):
        full = sum(self.pool.lengths[s.slot] == self.block_size for s in self.decoding)
        self.slides += full
        super()._slide_full_rows()
        self.mixed_rounds += bool(self.decoding and self.prefilling)


def run(batcher: ContinuousBatcher, requests, arrive_every: int) -> dict[int, list[int]]:
    """Add request i at round i * arrive_every; step until all are done; each request's tokens."""
    tokens: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    added = rounds = 0
    while added < len(requests) or batcher.busy:
        while added < len(requests) and added * arrive_every <= rounds:
            prompt, params = requests[added]
            batcher.add(added, prompt, params, torch.Generator().manual_seed(params.seed))
            added += 1
        for key, token in batcher.step():
            tokens[key].append(token)
        rounds += 1
    return tokens


@pytest.mark.parametrize("arrive_every", [0, 2])
def test_each_sequence_gets_its_tokens_alone_through_joins_chunks_slides_and_leaves(family, arrive_every):
    model = tiny_model(family)
    requests = random_requests(14, model.config.block_size)
    batcher = Recorder(model, n_slots=3, prefill_chunk=5)
    got = run(batcher, requests, arrive_every)
    for i, (prompt, params) in enumerate(requests):
        expected = alone(model, prompt, params)
        assert got[i] == expected, f"request {i}"
        if params.greedy and params.repetition_penalty == 1.0:
            assert expected == greedy_without_cache(model, prompt, params.max_new_tokens)
    # The run went through every path it claims to handle:
    assert batcher.slides > 0 and batcher.moves > 0 and batcher.mixed_rounds > 0
    assert not batcher.busy and batcher.slots_in_use == 0


def test_a_long_prompt_is_read_in_chunks_while_the_running_rows_keep_decoding(family):
    model = tiny_model(family, block_size=64)
    batcher = ContinuousBatcher(model, n_slots=2, prefill_chunk=8)
    greedy = SamplingParams(temperature=0, max_new_tokens=30)
    batcher.add("running", [1, 2, 3], greedy)
    assert batcher.step() == [("running", batcher.decoding[0].tokens[-1])]
    long_prompt = list(range(1, 41))  # 40 tokens: 5 rounds of 8
    batcher.add("long", long_prompt, greedy)
    rounds = []
    while not any(key == "long" for key, _ in (rounds[-1] if rounds else [])):
        rounds.append(batcher.step())
    assert len(rounds) == 5  # the first token after the fifth chunk
    assert all(sum(key == "running" for key, _ in r) == 1 for r in rounds)  # one token every round
    long_tokens = [rounds[-1][-1][1]]
    while batcher.busy:
        long_tokens += [token for key, token in batcher.step() if key == "long"]
    assert long_tokens == alone(model, long_prompt, greedy)


def test_removing_a_sequence_frees_its_slot_for_a_waiting_one_and_leaves_the_others_alone(family):
    model = tiny_model(family)
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    prompts = {"a": [1, 2], "b": [3, 4, 5], "c": [6], "d": [7, 8, 9, 10]}
    batcher = ContinuousBatcher(model, n_slots=3)
    for key, prompt in prompts.items():
        batcher.add(key, prompt, greedy)
    got = {key: [] for key in prompts}
    for _ in range(3):
        for key, token in batcher.step():
            got[key].append(token)
    assert [s.key for s in batcher.waiting] == ["d"] and batcher.slots_in_use == 3
    batcher.remove("a")  # slot 0: the last decoding row moves into it
    assert batcher.slots_in_use == 2
    while batcher.busy:
        for key, token in batcher.step():
            got[key].append(token)
    assert got["a"] == alone(model, prompts["a"], greedy)[:3]
    for key in "bcd":
        assert got[key] == alone(model, prompts[key], greedy)


def test_the_slot_pool_is_sized_by_its_memory_budget():
    model = tiny_model("llama")  # 2 layers, 2 KV heads of 8 numbers, 16 positions
    per_slot = 2 * 2 * 2 * 16 * 8 * 4  # (keys, values) x layers x heads x positions x head_dim x fp32 bytes
    assert SlotPool.slot_bytes(model.config) == per_slot
    assert slots_for_budget(model, 5.5 * per_slot / 2**20, max_slots=16) == 5
    assert slots_for_budget(model, 1000, max_slots=16) == 16
    with pytest.raises(ValueError, match="holds no sequence"):
        slots_for_budget(model, 0.5 * per_slot / 2**20, max_slots=16)


def test_a_step_over_ragged_rows_masks_each_row_at_its_own_position():
    step = SlotStep(slots=[4, 2], starts=[3, 0], new_tokens=[1, 2], device=torch.device("cpu"))
    assert (step.width, step.seen, step.contiguous) == (2, 4, False)
    assert step.positions.tolist() == [[3, 4], [0, 1]]
    assert step.is_real.tolist() == [[True, False], [True, True]]
    assert step.model_positions(block_size=4).tolist() == [[3, 3], [0, 1]]  # padding clamped into the table
    mask = step.attention_mask()[:, 0].int().tolist()
    assert mask[0][0] == [1, 1, 1, 1]  # row 0's query at position 3 sees keys 0..3
    assert mask[1] == [[1, 0, 0, 0], [1, 1, 0, 0]]  # row 1: causal from position 0
    assert step.last_real().tolist() == [0, 1]
