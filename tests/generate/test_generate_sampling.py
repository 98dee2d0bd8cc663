"""Sampling filters on a known distribution, the repetition penalty rule, greedy decoding and seeds."""

import pytest
import torch

from lmforge.generate.params import SamplingParams
from lmforge.generate.sampling import (apply_repetition_penalty, filter_min_p, filter_top_k, filter_top_p,
                                       sample_next)

PROBS = torch.tensor([0.05, 0.5, 0.1, 0.2, 0.15])  # sorted: 1 (0.5), 3 (0.2), 4 (0.15), 2 (0.1), 0 (0.05)
LOGITS = PROBS.log()


def kept_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(dim=-1)


def renormalised(keep: list[int]) -> torch.Tensor:
    expected = torch.zeros_like(PROBS)
    expected[keep] = PROBS[keep] / PROBS[keep].sum()
    return expected


def test_top_k_keeps_the_k_most_likely_tokens_renormalised():
    torch.testing.assert_close(kept_probs(filter_top_k(LOGITS, 2)), renormalised([1, 3]))
    assert filter_top_k(LOGITS, 0) is LOGITS


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.5 + 0.2 = 0.7 < 0.8, adding 0.15 reaches 0.85: three tokens stay.
    torch.testing.assert_close(kept_probs(filter_top_p(LOGITS, 0.8)), renormalised([1, 3, 4]))
    torch.testing.assert_close(kept_probs(filter_top_p(LOGITS, 0.7)), renormalised([1, 3]))
    torch.testing.assert_close(kept_probs(filter_top_p(LOGITS, 0.01)), renormalised([1]))  # never empty


def test_min_p_drops_tokens_below_a_fraction_of_the_top_probability():
    # threshold 0.25 * 0.5 = 0.125: 0.15 stays, 0.1 and 0.05 go.
    torch.testing.assert_close(kept_probs(filter_min_p(LOGITS, 0.25)), renormalised([1, 3, 4]))
    torch.testing.assert_close(kept_probs(filter_min_p(LOGITS, 0.5)), renormalised([1]))


def test_filters_work_row_by_row_on_a_batch():
    batch = torch.stack([LOGITS, LOGITS.flip(0)])
    kept = kept_probs(filter_top_k(batch, 2))
    torch.testing.assert_close(kept, torch.stack([renormalised([1, 3]), renormalised([1, 3]).flip(0)]))


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    context = torch.tensor([0, 1, 1, 0])  # repeats count once
    penalised = apply_repetition_penalty(logits, context, 2.0)
    assert penalised.tolist() == [1.0, -2.0, 0.5, -3.0]
    assert apply_repetition_penalty(logits, context, 1.0) is logits


def test_penalty_changes_the_greedy_choice():
    logits = torch.tensor([2.0, 1.5, 0.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sample_next(logits, params).item() == 0
    assert sample_next(logits, params, context=torch.tensor([0])).item() == 1  # 2.0 / 2 = 1.0 < 1.5


def test_temperature_zero_is_greedy_whatever_the_filters_and_seed():
    params = SamplingParams(temperature=0, top_k=3, top_p=0.5, min_p=0.2)
    batch = torch.stack([LOGITS, LOGITS.flip(0)])
    assert sample_next(batch, params).tolist() == [1, 3]


def test_same_seed_same_draws_and_different_seeds_differ():
    params = SamplingParams(temperature=1.0)
    logits = torch.zeros(100)  # uniform over 100 tokens: different seeds will not agree on 20 draws

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [sample_next(logits, params, generator).item() for _ in range(20)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_sampling_frequencies_follow_the_filtered_distribution():
    params = SamplingParams(temperature=1.0, top_k=2)
    generator = torch.Generator().manual_seed(0)
    draws = sample_next(LOGITS.expand(4000, 5), params, generator)
    assert set(draws.tolist()) == {1, 3}
    assert (draws == 1).float().mean().item() == pytest.approx(0.5 / 0.7, abs=0.03)


def test_high_temperature_flattens_the_distribution():
    generator = torch.Generator().manual_seed(0)
    draws = sample_next(LOGITS.expand(4000, 5), SamplingParams(temperature=100.0), generator)
    # Near-uniform: even the 5% token comes up about a fifth of the time.
    assert (draws == 0).float().mean().item() == pytest.approx(0.2, abs=0.03)
