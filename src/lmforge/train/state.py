"""TrainState: the counters a run needs to continue exactly where it stopped, and the RNG snapshot."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch


@dataclass
class TrainState:
    step: int = 0                     # optimizer steps done
    tokens_seen: int = 0              # training tokens consumed (all ranks)
    elapsed: float = 0.0              # seconds of the run (setup included), summed over resumed sessions
    best_val_loss: float = math.inf
    best_step: int | None = None
    evals_since_best: int = 0         # for early stopping
    fitted_steps: int | None = None   # a max_time run's length in steps, fitted from its measured speed
    fitted_at: int | None = None      # the step of that fit
    rechecked: bool = False           # the half-way check of the fit is done (train/budget.py)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, data: dict) -> None:
        for key, value in data.items():
            setattr(self, key, value)


def capture_rng() -> dict:
    """Every random generator training touches (dropout uses torch's), so a resume replays them."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
