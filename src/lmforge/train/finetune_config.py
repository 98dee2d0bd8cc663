"""FinetuneConfig: what a fine-tuning run adapts the pretrained model to, and how.

Two independent choices:

* task   -- causal: continue next-token training on plain text (domain adaptation);
            instruct: supervised fine-tuning (SFT) on prompt/response examples, the prompt masked out;
            classify: replace the LM head with a class head and train on labelled text;
            dpo, orpo: preference tuning on pairs of a chosen and a rejected answer (train/preference.py).
* method -- full: every weight trains; lora: the base is frozen and small low-rank adapters train;
            qlora: as lora, with the frozen base stored in 4-bit NF4 to save memory.

The model to start from is `model.init_from` (an lmforge checkpoint or a Hugging Face folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "lm_head", "all")


@dataclass
class LoRASettings:
    """Low-rank adapters: W x + (alpha / r) * B A x, with A (r x in) and B (out x r) the only trained weights."""

    r: int = field(default=8, metadata={"help": "adapter rank: capacity of the update (4-64 typical)"})
    alpha: float = field(default=16.0, metadata={"help": "scale; the update is multiplied by alpha / r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter's input"})
    targets: list[str] = field(default_factory=lambda: ["q", "v"], metadata={
        "help": "layers that get adapters: q k v o gate up down lm_head, or all (every linear layer in the blocks)"})

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"r: must be at least 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"targets: unknown {unknown or 'empty list'}; choose from {', '.join(LORA_TARGETS)}")


@dataclass
class InstructSettings:
    """Supervised fine-tuning on instructions or conversations."""

    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = field(default="auto", metadata={
        "help": "dataset format; auto detects it from the keys of the first record"})
    template: str = field(default="chatml", metadata={
        "help": "prompt template (chatml | alpaca | plain); stored with the checkpoint for chat"})
    mask_prompt: bool = field(default=True, metadata={"help": "train only on the responses (prompt labels = -100)"})
    pack: bool = field(default=False, metadata={"help": "pack several short examples into one row"})
    max_truncated: float = field(default=0.05, metadata={
        "help": "fail the pre-flight check when more than this share of examples is cut at block_size"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of examples held out for validation"})


@dataclass
class ClassifySettings:
    """Classification: a new head on the last real token's hidden state."""

    text_field: str | None = field(default=None, metadata={"help": "column/key with the text; null = guess"})
    label_field: str | None = field(default=None, metadata={"help": "column/key with the label; null = guess"})
    trainable: Literal["none", "all"] | int = field(default="none", metadata={
        "help": "what of the body trains besides the head: none | all | N (the last N blocks + final norm)"})
    balance: Literal["none", "downsample", "weighted"] = field(default="none", metadata={
        "help": "unequal classes: downsample the larger ones, or weight the loss by inverse frequency"})
    val_fraction: float = field(default=0.15, metadata={"help": "share held out (stratified) for validation"})
    max_length: int | None = field(default=None, metadata={"help": "tokens kept per text; null = block_size"})

    def validate(self) -> None:
        if isinstance(self.trainable, int) and self.trainable < 0:
            raise ValueError(f"trainable: a number of blocks cannot be negative, got {self.trainable}")


@dataclass
class PreferenceSettings:
    """Preference tuning (dpo, orpo) on prompt / chosen / rejected records (data/preference.py)."""

    format: Literal["auto", "prompt_chosen_rejected", "alpaca", "implicit"] = field(default="auto", metadata={
        "help": "record format; auto detects it from the keys of the first record"})
    template: str = field(default="chatml", metadata={
        "help": "prompt template (chatml | alpaca | plain): the one the model was instruction-tuned with"})
    beta: float = field(default=0.1, metadata={
        "help": "dpo: how far the policy may move from the reference (smaller = further); orpo: the weight "
                "(lambda) of the odds-ratio term"})
    loss: Literal["sigmoid", "ipo"] = field(default="sigmoid", metadata={
        "help": "dpo: sigmoid (the DPO paper's) or ipo (a squared loss that stops at a margin of 1 / (2 beta))"})
    orpo_nll_on_prompt: bool = field(default=False, metadata={
        "help": "orpo: the SFT part scores the prompt's tokens too (trl's ORPOTrainer does); default: the answer only"})
    max_truncated: float = field(default=0.05, metadata={
        "help": "fail the pre-flight check when more than this share of pairs has an answer cut at block_size"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of pairs held out for validation"})

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta: must be positive, got {self.beta}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")


@dataclass
class GRPOSettings:
    """GRPO (train/grpo.py): prompts from data.path (JSON/JSONL records with a "prompt"), rewards from functions."""

    rewards: list[str] = field(default_factory=list, metadata={
        "help": "reward functions as module:function, each called as f(prompt, completion, record) -> float; "
                "their rewards add up"})
    template: str = field(default="chatml", metadata={"help": "prompt template the prompts are rendered with"})
    group_size: int = field(default=8, metadata={"help": "completions sampled per prompt (G)"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens per completion at most"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the completions"})
    beta: float = field(default=0.04, metadata={
        "help": "weight of the KL penalty to the reference (the starting model); 0 = none, no reference kept"})
    epsilon: float = field(default=0.2, metadata={"help": "clipping range of the probability ratio"})

    def validate(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size: at least 2 completions per prompt (a group is the baseline), "
                             f"got {self.group_size}")
        if self.max_new_tokens < 1 or self.temperature <= 0 or self.beta < 0:
            raise ValueError("max_new_tokens must be >= 1, temperature > 0 and beta >= 0")


@dataclass
class FinetuneConfig:
    """Fine-tuning: the task, the method, and their settings (used by `lmforge finetune`)."""

    task: Literal["causal", "instruct", "classify", "dpo", "orpo", "grpo"] = field(default="causal", metadata={
        "help": "causal = more plain text; instruct = SFT on examples; classify = labelled text; "
                "dpo, orpo = preference tuning on prompt / chosen / rejected pairs; grpo = RL with reward functions"})
    method: Literal["full", "lora", "qlora"] = field(default="full", metadata={
        "help": "full = all weights; lora = adapters only; qlora = adapters on a 4-bit base"})
    quant_backend: Literal["auto", "torch", "bnb"] = field(default="auto", metadata={
        "help": "qlora's 4-bit kernels: bnb (bitsandbytes), torch (pure PyTorch), auto = bnb if installed"})
    lora: LoRASettings = field(default_factory=LoRASettings, metadata={"help": "adapters (lora and qlora)"})
    instruct: InstructSettings = field(default_factory=InstructSettings, metadata={"help": "task: instruct"})
    classify: ClassifySettings = field(default_factory=ClassifySettings, metadata={"help": "task: classify"})
    preference: PreferenceSettings = field(default_factory=PreferenceSettings, metadata={"help": "tasks: dpo, orpo"})
    grpo: GRPOSettings = field(default_factory=GRPOSettings, metadata={"help": "task: grpo"})

    def validate(self) -> None:
        self.preference.validate()
        self.grpo.validate()
        if self.task == "classify" and self.method != "full":
            raise ValueError("method: classification trains a new head (and optionally the last blocks); "
                             "use method: full with classify.trainable to choose what trains")
