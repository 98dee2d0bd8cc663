"""LoRA: fine-tune a big frozen linear layer through a small low-rank update (Hu et al., 2021).

A pretrained weight W (out x in) stays frozen. Beside it we learn two thin matrices, A (r x in) and
B (out x r), with r much smaller than in and out, and compute

    y = W x + (alpha / r) * B A x

so the layer behaves as if its weight were W + (alpha / r) * B A. Only A and B train: for a 768x768
projection with r = 8 that is 12,288 numbers instead of 589,824, and so are the gradients and the
optimizer state. B starts at zero, so the wrapped model starts out computing exactly what the base
did; A starts random (Kaiming-uniform, like an nn.Linear), so gradients reach B from step one.
alpha / r keeps the update's scale roughly independent of the rank you pick.

Because the update is just a matrix, it can be folded into W after training ("merging"): the
fine-tuned model then costs nothing extra at inference. `merge_lora` does that; a 4-bit base
(see nf4.py and qlora.py) cannot absorb a small update exactly, so merging returns a full-precision
layer (dequantized base + update) and warns about the precision trade-off.

Targets are short names of the linear layers of lmforge's GPT: q, k, v, o (attention), gate, up,
down (MLP; gate only in SwiGLU models) and lm_head. An lm_head tied to the token embedding is
untied first (given its own copy of the matrix), so its update changes the output layer only and
merging cannot silently edit the input embedding; model.config then says tie_embeddings=False so a
saved checkpoint rebuilds the untied model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn as nn

from ..model.linear import Linear
from .nf4 import NF4Linear, dequantized_weight, is_4bit_linear

# Short target name -> the end of the module path in lmforge's GPT (blocks.N.<path> or the root).
TARGET_PATHS = {
    "q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
    "gate": "mlp.gate", "up": "mlp.up", "down": "mlp.down",
    "lm_head": "lm_head",
}
ADAPTER_NAMES = ("lora_A", "lora_B")


@dataclass
class LoRAConfig:
    """The LoRA settings a checkpoint needs to rebuild its adapters (stored as adapter_config-like JSON)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in TARGET_PATHS]
        if unknown or not self.targets:
            raise ValueError(f"unknown LoRA target(s) {unknown or '(none given)'}; "
                             f"valid targets: {', '.join(TARGET_PATHS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> LoRAConfig:
        """Rebuild from to_dict() output; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ParamCount:
    """How many parameters train, out of how many (a 4-bit weight counts as its logical size)."""

    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} ({self.share:.2%})"


def _logical_numel(p: torch.Tensor) -> int:
    """Elements a parameter stands for: a bitsandbytes 4-bit weight packs two per stored byte."""
    state = getattr(p, "quant_state", None)
    return math.prod(state.shape) if state is not None else p.numel()


def count_params(model: nn.Module) -> ParamCount:
    """Trainable and total parameters; shared (tied) tensors count once, NF4Linear weights count too."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(_logical_numel(p) for p in unique)
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, NF4Linear))  # buffers
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return ParamCount(trainable, total)


def _base_device(base: nn.Module) -> torch.device:
    tensor = next(iter(base.parameters()), None)
    if tensor is None:
        tensor = next(iter(base.buffers()))
    return tensor.device


class LoRALinear(nn.Module):
    """A frozen base linear layer (nn.Linear, NF4Linear or bitsandbytes Linear4bit) plus B A x * alpha/r.

    The adapters are fp32 whatever the base's dtype: they are small, and fp32 keeps their tiny
    updates from rounding away. `merged` says the update currently lives inside base.weight
    (float bases only), so forward must not add it a second time.
    """

    def __init__(self, base: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if isinstance(base, LoRALinear):
            raise ValueError("this layer already has a LoRA adapter")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        device = _base_device(base)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=device))
        # The same init as nn.Linear's weight (and the LoRA reference code): uniform, Kaiming with a = sqrt(5).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # True inside adapters_disabled(): the layer computes its base alone

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def quantized_base(self) -> bool:
        return is_4bit_linear(self.base)

    def delta_weight(self) -> torch.Tensor:
        """The update as a weight matrix (out x in): what merging adds to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.disabled:
            return y
        update = (self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()
        return y + (update * self.scale).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight in place (undo with unmerge)."""
        self._check_mergeable()
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the base weight (exact up to float rounding)."""
        self._check_mergeable()
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def _check_mergeable(self) -> None:
        if self.quantized_base:
            raise ValueError("cannot merge in place into a 4-bit base weight; merge_lora(model) returns "
                             "a full-precision layer instead")

    def merged_linear(self) -> nn.Linear:
        """A plain linear layer (lmforge's nn.Linear) computing base + update (a 4-bit base is dequantized to fp32)."""
        if self.quantized_base:
            weight = dequantized_weight(self.base, torch.float32) + self.delta_weight()
        else:
            weight = self.base.weight.detach()
            if not self.merged:
                weight = weight + self.delta_weight().to(weight.dtype)
        linear = Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


@dataclass
class LoRAReport:
    """What apply_lora did: which layers got adapters and how much of the model now trains."""

    config: LoRAConfig
    wrapped: list[str]
    params: ParamCount
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"LoRA r={self.config.r} alpha={self.config.alpha} on {len(self.wrapped)} layers "
                 f"({', '.join(self.config.targets)}): {self.params}"]
        return "\n".join(lines + self.notes)


def _parent_and_leaf(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), leaf


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, leaf = _parent_and_leaf(model, name)
    setattr(parent, leaf, new)


def _matches(name: str, target: str) -> bool:
    path = TARGET_PATHS[target]
    return name == path or name.endswith("." + path)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, LoRALinear)) or is_4bit_linear(module)


def find_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Module names of the linear layers the targets select; a target matching nothing is an error."""
    found = []
    for target in targets:
        names = [n for n, m in model.named_modules() if _matches(n, target) and _is_linear(m)]
        if not names:
            hint = " (gate exists only in SwiGLU MLPs, e.g. Llama-style models)" if target == "gate" else ""
            raise ValueError(f"LoRA target {target!r} ({TARGET_PATHS[target]}) does not exist in this model{hint}")
        wrapped = [n for n in names if isinstance(model.get_submodule(n), LoRALinear)]
        if wrapped:
            raise ValueError(f"{wrapped[0]} already has a LoRA adapter")
        found += names
    return found


def _untie_output_head(model: nn.Module, name: str) -> str | None:
    """Give a tied lm_head its own copy of the embedding matrix; returns a note, or None if not tied."""
    owner, _ = _parent_and_leaf(model, name)
    head = model.get_submodule(name)
    embedding = getattr(owner, "tok_emb", None)
    if embedding is None or head.weight is not embedding.weight:
        return None
    head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=False)
    if getattr(owner, "config", None) is not None and getattr(owner.config, "tie_embeddings", False):
        owner.config = replace(owner.config, tie_embeddings=False)
    return (f"{name} was tied to tok_emb: untied it (its own copy) so the adapter updates only the output "
            f"layer; config.tie_embeddings is now False")


def apply_lora(model: nn.Module, targets=("q", "v"), r: int = 8, alpha: float = 16.0,
               dropout: float = 0.05, also_train: tuple[str, ...] = ()) -> LoRAReport:
    """Wrap the target linear layers of `model` in LoRALinear and freeze everything else (in place).

    targets: short names from TARGET_PATHS, as a sequence or a comma-separated string ("q,k,v,o").
    also_train: names of modules that keep training beside the adapters, e.g. ("head",) for the
    new, randomly initialised head of a ClassifierModel (it has no pretrained weights to keep).
    """
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(targets))
    names = find_targets(model, config.targets)
    kept = _modules_named(model, also_train)  # checked before the model is changed
    notes = [note for n in names if n.endswith("lm_head") and (note := _untie_output_head(model, n))]
    model.requires_grad_(False)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    for module in kept:
        module.requires_grad_(True)
    return LoRAReport(config, names, count_params(model), notes)


def _modules_named(model: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    found = []
    for wanted in names:
        modules = [m for name, m in model.named_modules() if name.rpartition(".")[2] == wanted]
        if not modules:
            raise ValueError(f"also_train: the model has no module named {wanted!r}")
        found += modules
    return found


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The model computes its base alone for the duration (peft's disable_adapter): with fresh adapters
    (B = 0) that is the model as training started, so GRPO gets its reference model for free instead of
    a second copy of the weights (not quite: modules trained beside the adapters, apply_lora's
    also_train, stay as trained). A merged update cannot be switched off."""
    layers = list(lora_layers(model).values())
    if any(layer.merged for layer in layers):
        raise ValueError("adapters_disabled: the adapters are merged into the base weights; unmerge them first")
    before = [layer.disabled for layer in layers]  # restored, not reset: blocks may nest
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, was in zip(layers, before):
            layer.disabled = was


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, named like "blocks.0.attn.q.lora_A" (detached copies)."""
    return {f"{name}.{part}": getattr(layer, part).detach().clone()
            for name, layer in lora_layers(model).items() for part in ADAPTER_NAMES}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into a model that already has the same adapters (apply_lora first).

    Strict: a missing or unexpected name, or a shape mismatch, raises before anything is copied.
    """
    expected = lora_state_dict(model)
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise KeyError(f"LoRA state mismatch: missing {missing}, unexpected {unexpected}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} in the file, "
                             f"{tuple(expected[key].shape)} in the model")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, tensor in state.items():
            name, _, part = key.rpartition(".")
            getattr(layers[name], part).copy_(tensor)


def merge_lora(model: nn.Module, unload: bool = True) -> nn.Module:
    """Fold every adapter into its base weight and return the model (modified in place).

    unload=True: each LoRALinear becomes a plain nn.Linear (original module names, ready to save).
    unload=False: the wrappers stay, marked merged, and unmerge_lora can take the updates back out.
    A 4-bit base is dequantized and returned as an fp32 nn.Linear (re-quantize with
    qlora.quantize_model if needed); this warns about the precision trade-off (see qlora.merge_drift).
    """
    layers = lora_layers(model)
    quantized = [name for name, layer in layers.items() if layer.quantized_base]
    if quantized and not unload:
        raise ValueError("a 4-bit base cannot be merged in place; use merge_lora(model, unload=True)")
    if quantized:
        warnings.warn(f"merging LoRA into {len(quantized)} 4-bit base layers: they become fp32 layers holding the "
                      "dequantized NF4 weight plus the update (about 8x the memory). That matches the adapted model, "
                      "but precision is lost if they are quantized back to 4 bits, and the update does not carry over "
                      "exactly to the original unquantized weights (measure with lmforge.adapt.qlora.merge_drift)",
                      stacklevel=2)
    for name, layer in layers.items():
        if unload:
            _replace(model, name, layer.merged_linear())
        else:
            layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora(model, unload=False): every adapter's update leaves its base weight again."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model
