"""Evaluation: how well a trained model predicts held-out text (loss, perplexity, next-token accuracy)."""

from lmforge.eval.perplexity import EvalResult, evaluate, heldout_batches, heldout_dataset

__all__ = ["EvalResult", "evaluate", "heldout_batches", "heldout_dataset"]
