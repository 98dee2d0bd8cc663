"""Fine-tuning end to end: a pretrained checkpoint -> model surgery -> task data -> the training loop.

The loop is the one pretraining uses (train/loop.py). Fine-tuning only chooses:
  * the starting weights   -- model.init_from, an lmforge checkpoint or a Hugging Face folder;
  * the surgery            -- LoRA adapters, a 4-bit NF4 base (QLoRA), or a classification head;
  * the batches and loss   -- plain text (causal), masked conversations (instruct) or labelled text
                              (classify);
  * what a checkpoint keeps -- all weights, or only the LoRA adapters plus the base's location.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..adapt.heads import ClassifierModel, freeze_for_classification
from ..adapt.lora import TARGET_PATHS, LoRAConfig, apply_lora, count_params
from ..adapt.qlora import quantize_model
from ..data.classify import ClassifyBatches, balance, class_weights, load_labelled, stratified_split
from ..data.config import DataConfig
from ..data.loader import TokenBatches
from ..data.sft import (SFTBatches, drop_truncated_answers, load_sft_examples, preflight, read_records,
                        split_examples, tokenize_conversation)
from ..data.preference import PreferenceBatches, load_preference_pairs, tokenize_pairs, with_reference_logps
from ..data.templates import TEMPLATES, render
from ..distributed.config import DistConfig
from ..distributed.env import DistEnv, distributed_session, main_process_first, quiet_unless_main
from ..distributed.wrap import resolve_strategy
from ..ingest.config import IngestConfig
from ..model.config import ModelConfig
from ..tokenizer import load_tokenizer
from . import checkpoint as ckpt
from .config import TrainConfig
from .finetune_config import FinetuneConfig
from .loop import Benchmark, Trainer, TrainResult
from .model_files import ClassifierFiles, LoRAFiles, with_chat_template
from .objectives import classification_loss, lm_loss_sum
from .precision import run_precision
from .grpo import AdaptersOff, FrozenCopy, GroupSampler, GRPOLoss, SamplingSettings, load_reward_functions
from .preference import DPOLoss, ORPOLoss, answer_logps
from .run_folder import claim_run_folder
from .pretrain import describe_parallelism, prepare_data


@dataclass
class TaskSetup:
    """What a task hands the loop: the model to train, its batches, its loss and its checkpoint format."""

    model: torch.nn.Module
    train_batches: object
    val_batches: object | None
    loss_fn: object = lm_loss_sum
    files: object = None
    describe: str = ""
    sample_prompt: str | None = None  # what samples start from, when the task has a better idea than ""


def run_finetuning(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, ft: FinetuneConfig,
                   ingest_cfg: IngestConfig | None = None, config_yaml: str | None = None,
                   dist_cfg: DistConfig | None = None, benchmark: Benchmark | None = None) -> tuple[TrainResult, TaskSetup]:
    """Fine-tune and return the loop's result and the task's setup (its model and validation batches).

    Under torchrun with several processes it is one data-parallel run, as pretraining is (lmforge.distributed):
    every process builds the same model, takes its share of the batches, and rank 0 writes.
    """
    if not model_cfg.init_from:
        raise ValueError("model.init_from: fine-tuning starts from pretrained weights; set it to an lmforge "
                         "checkpoint folder or a Hugging Face model folder")
    if benchmark is not None and ft.task == "classify":
        raise ValueError("train.eval_tasks scores language-model tasks; a classify run trains a classifier head "
                         "(its metrics report covers it)")
    dist_cfg = dist_cfg or DistConfig()
    with distributed_session(dist_cfg, train_cfg.device) as (env, device):
        with quiet_unless_main(env), claim_run_folder(train_cfg.out_dir, train_cfg.resume, env.is_main):
            return _finetune(model_cfg, data_cfg, train_cfg, ft, ingest_cfg, config_yaml, dist_cfg, env, device,
                             benchmark)


def _finetune(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig, ft: FinetuneConfig,
              ingest_cfg: IngestConfig | None, config_yaml: str | None, dist_cfg: DistConfig, env: DistEnv,
              device: torch.device, benchmark: Benchmark | None = None) -> tuple[TrainResult, TaskSetup]:
    started = time.perf_counter()  # train.max_time budgets the whole run, data preparation included
    random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    base_dir = Path(model_cfg.init_from).expanduser().resolve()
    model = ckpt.load_model_from_checkpoint(base_dir)
    model.set_dropout(model_cfg.dropout)
    tokenizer = load_tokenizer(base_dir)
    with main_process_first(env):  # rank 0 prepares any data cache first; the others then read it
        setup = TASKS[ft.task](model, tokenizer, base_dir, data_cfg, train_cfg, ft, ingest_cfg)
    if ft.method != "full":
        setup = _with_lora(setup, base_dir, ft)
    if ft.task == "dpo":
        add_reference_logps(setup, train_cfg.batch_size, device)
    if setup.sample_prompt is not None and not train_cfg.sample_prompt:
        train_cfg = replace(train_cfg, sample_prompt=setup.sample_prompt)  # e.g. a question in the chat template
    if ft.task == "classify":
        train_cfg = replace(train_cfg, sample_prompt="", sample_interval=0)  # a classifier does not write text
    setup.sample_prompt = train_cfg.sample_prompt
    run_dir = Path(train_cfg.out_dir).expanduser()

    def probe_batch():  # a real batch for the precision probe (eval_batches does not move the data position)
        return next(iter(setup.train_batches.eval_batches(1)))

    precision, why = run_precision(train_cfg.precision, setup.model, probe_batch, device, setup.loss_fn, run_dir,
                                   train_cfg.resume, env.is_distributed)
    strategy = _strategy(dist_cfg, ft, env, setup.model, device)
    if env.is_distributed:
        torch.manual_seed(train_cfg.seed + env.rank)  # the same weights everywhere; dropout masks differ per rank
        setup.train_batches = setup.train_batches.split_across(env.rank, env.world_size)  # this rank's share
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_yaml is not None:
            (run_dir / "config.yaml").write_text(config_yaml)
    print(f"fine-tuning {base_dir}: task {ft.task}, method {ft.method}; {setup.describe}")
    print(f"{count_params(setup.model)}; device {device}, precision {precision} ({why})")
    if env.is_distributed:
        print(describe_parallelism(train_cfg, env, strategy, model.config.block_size))
    trainer = Trainer(setup.model, tokenizer, setup.train_batches, setup.val_batches, train_cfg, run_dir, device,
                      precision, setup.loss_fn, setup.files, env=env, strategy=strategy,
                      setup_seconds=time.perf_counter() - started, benchmark=benchmark)
    return trainer.fit(), setup


def _strategy(dist_cfg: DistConfig, ft: FinetuneConfig, env: DistEnv, model: torch.nn.Module,
              device: torch.device) -> str:
    """How several processes share the model: like pretraining for full fine-tuning; DDP for adapters."""
    if not env.is_distributed:
        return "none"
    if ft.method == "qlora":
        raise ValueError("finetune.method: qlora runs in one process (its 4-bit base is not shared across "
                         "processes yet); use lora, or launch without torchrun")
    if ft.method == "lora" or ft.task == "classify":
        if dist_cfg.strategy == "fsdp":
            raise ValueError(f"dist.strategy: fsdp shards every weight, but a {ft.method} {ft.task} run trains "
                             "a few small ones next to a frozen base; use ddp (or auto)")
        return "ddp"
    return resolve_strategy(dist_cfg.strategy, env.world_size, sum(p.numel() for p in model.parameters()), device)


# ---- tasks --------------------------------------------------------------------------------------------
def _causal(model, tokenizer, base_dir, data_cfg, train_cfg, ft, ingest_cfg) -> TaskSetup:
    """More plain text, read with the base model's tokenizer; every token is a target."""
    data_dir = prepare_data(data_cfg, ingest_cfg, tokenizer_spec=str(base_dir))
    block = model.config.block_size
    train = TokenBatches(data_dir, "train", block, train_cfg.batch_size, seed=train_cfg.seed)
    has_val = (Path(data_dir) / "val.bin").stat().st_size > 0
    val = TokenBatches(data_dir, "val", block, train_cfg.batch_size, seed=train_cfg.seed) if has_val else None
    return TaskSetup(model, train, val, files=ckpt.FullWeights(), describe=f"text from {data_dir}")


def _instruct(model, tokenizer, base_dir, data_cfg, train_cfg, ft, ingest_cfg) -> TaskSetup:
    """Conversations in a template; only the assistant's turns (and their end token) are targets."""
    settings = ft.instruct
    path = _single_data_file(data_cfg, "instruction examples (JSON or JSONL)")
    if settings.template not in TEMPLATES:
        raise ValueError(f"finetune.instruct.template: unknown {settings.template!r}; choose {', '.join(TEMPLATES)}")
    template = TEMPLATES[settings.template]
    conversations = load_sft_examples(path, settings.format)
    max_length = model.config.block_size + 1  # a row of block_size inputs predicts block_size targets
    examples = [tokenize_conversation(c, tokenizer, template, settings.mask_prompt, max_length)
                for c in conversations]
    examples = _drop_cut_answers(examples, tokenizer.eot_id, settings.max_truncated, max_length)
    print(f"pre-flight: {preflight(examples, tokenizer, max_length, settings.max_truncated)}")
    train_ex, val_ex = split_examples(examples, settings.val_fraction, train_cfg.seed)
    pad = tokenizer.eot_id
    train = SFTBatches(train_ex, train_cfg.batch_size, train_cfg.seed, pad, pack=settings.pack,
                       block_size=model.config.block_size)
    val = SFTBatches(val_ex, train_cfg.batch_size, train_cfg.seed, pad) if val_ex else None
    files = with_chat_template(ckpt.FullWeights(), template)
    probe = render([{"role": "user", "content": "Give three tips for staying healthy."}], template)
    return TaskSetup(model, train, val, files=files, sample_prompt=probe,
                     describe=f"{len(train_ex):,} train / {len(val_ex):,} val conversations, template {template.name}")


def _drop_cut_answers(examples: list, eot_id: int, max_share: float, max_length: int) -> list:
    kept = drop_truncated_answers(examples, eot_id, max_share, max_length)
    if len(kept) < len(examples):
        print(f"pre-flight: left out {len(examples) - len(kept)} of {len(examples)} examples cut before the end "
              f"of their answer at {max_length} tokens")
    return kept


def _classify(model, tokenizer, base_dir, data_cfg, train_cfg, ft, ingest_cfg) -> TaskSetup:
    """Labelled texts; a new head reads the last real token; the loss is cross-entropy over classes."""
    settings = ft.classify
    path = _single_data_file(data_cfg, "labelled texts (CSV, TSV or JSONL)")
    texts, labels, classes = load_labelled(path, settings.text_field, settings.label_field)
    label_ids = [classes.index(label) for label in labels]
    max_length = min(settings.max_length or model.config.block_size, model.config.block_size)
    tokens = [tokenizer.encode(text)[:max_length] or [tokenizer.eot_id] for text in texts]
    train_idx, val_idx = stratified_split(len(texts), label_ids, settings.val_fraction, train_cfg.seed)
    if settings.balance == "downsample":
        train_idx = balance(train_idx, label_ids, "downsample", seed=train_cfg.seed)
    weights = class_weights([label_ids[i] for i in train_idx], len(classes)) if settings.balance == "weighted" else None

    def batches(indices, seed):
        return ClassifyBatches([tokens[i] for i in indices], [label_ids[i] for i in indices],
                               train_cfg.batch_size, seed, tokenizer.eot_id, max_length)

    classifier = ClassifierModel(model, len(classes))
    freeze_for_classification(classifier, settings.trainable)
    counts = {c: sum(1 for i in train_idx if label_ids[i] == k) for k, c in enumerate(classes)}
    return TaskSetup(classifier, batches(train_idx, train_cfg.seed), batches(val_idx, train_cfg.seed) if val_idx else None,
                     loss_fn=classification_loss(weights), files=ClassifierFiles(classes),
                     describe=f"{len(train_idx):,} train / {len(val_idx):,} val texts, classes {counts}")


def _preference(model, tokenizer, base_dir, data_cfg, train_cfg, ft, ingest_cfg) -> TaskSetup:
    """Pairs of answers to one prompt; DPO against the starting model as reference, or ORPO (no reference)."""
    settings = ft.preference
    path = _single_data_file(data_cfg, "preference pairs (JSON or JSONL: prompt, chosen, rejected)")
    if settings.template not in TEMPLATES:
        raise ValueError(f"finetune.preference.template: unknown {settings.template!r}; "
                         f"choose {', '.join(TEMPLATES)}")
    template = TEMPLATES[settings.template]
    max_length = model.config.block_size + 1
    pairs, report = tokenize_pairs(load_preference_pairs(path, settings.format), tokenizer, template, max_length,
                                   settings.max_truncated)
    print(f"pre-flight: {report.summary()}")
    loss_fn = DPOLoss(settings.beta, settings.loss) if ft.task == "dpo" else ORPOLoss(settings.beta,
                                                                                       settings.orpo_nll_on_prompt)
    train_pairs, val_pairs = split_examples(pairs, settings.val_fraction, train_cfg.seed)
    pad = tokenizer.eot_id
    train = PreferenceBatches(train_pairs, train_cfg.batch_size, train_cfg.seed, pad)
    val = PreferenceBatches(val_pairs, train_cfg.batch_size, train_cfg.seed, pad) if val_pairs else None
    files = with_chat_template(ckpt.FullWeights(), template)
    probe = render([{"role": "user", "content": "Give three tips for staying healthy."}], template)
    what = f"{ft.task} (beta {settings.beta}" + (f", loss {settings.loss})" if ft.task == "dpo" else ")")
    return TaskSetup(model, train, val, loss_fn=loss_fn, files=files, sample_prompt=probe,
                     describe=f"{what}: {len(train_pairs):,} train / {len(val_pairs):,} val pairs, "
                              f"template {template.name}")


@torch.no_grad()
def add_reference_logps(setup: TaskSetup, batch_size: int, device: torch.device) -> None:
    """DPO's reference is the model as training starts (after any surgery: fresh LoRA adapters add nothing, and a
    QLoRA base is the 4-bit one the policy uses). It is frozen, so each answer's log-probability under it is
    computed once, here, and travels with the batches: no second copy of the weights. A resumed run gets the same
    numbers (the trainer loads the checkpoint's weights only later)."""
    model = setup.model.to(device)
    was_training = model.training
    model.eval()
    try:
        for batches in (setup.train_batches, setup.val_batches):
            if batches is not None:
                batches.pairs = with_reference_logps(
                    batches.pairs, lambda x, y: answer_logps(model, x.to(device), y.to(device))[0].cpu(), batch_size)
    finally:
        model.train(was_training)


def _grpo(model, tokenizer, base_dir, data_cfg, train_cfg, ft, ingest_cfg) -> TaskSetup:
    """Prompts; groups of completions sampled from the model as it trains, scored by reward functions."""
    settings = ft.grpo
    path = _single_data_file(data_cfg, "prompts (JSON or JSONL records with a \"prompt\")")
    if settings.template not in TEMPLATES:
        raise ValueError(f"finetune.grpo.template: unknown {settings.template!r}; choose {', '.join(TEMPLATES)}")
    template = TEMPLATES[settings.template]
    rewards = load_reward_functions(settings.rewards)
    records = read_records(path)
    prompts = []
    for index, record in enumerate(records):
        prompt = record.get("prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path}: record {index} needs a \"prompt\": a string or a list of messages")
        ids = tokenizer.encode(render(messages, template))
        if len(ids) + settings.max_new_tokens > model.config.block_size:
            raise ValueError(f"{path}: record {index}'s prompt ({len(ids)} tokens) and max_new_tokens "
                             f"({settings.max_new_tokens}) do not fit the context of {model.config.block_size}")
        prompts.append(ids)
    # The reference is the starting model, kept only with a KL term: with adapters, the policy with them switched
    # off (they are added after this, in _with_lora); otherwise a frozen copy made now.
    reference = None
    if settings.beta > 0:
        reference = FrozenCopy(model) if ft.method == "full" else AdaptersOff(model)
    sampling = SamplingSettings(settings.group_size, settings.max_new_tokens, settings.temperature)
    batches = GroupSampler(model, reference, tokenizer, prompts, records, rewards, sampling, train_cfg.batch_size,
                           train_cfg.seed)
    files = with_chat_template(ckpt.FullWeights(), template)
    return TaskSetup(model, batches, None, loss_fn=GRPOLoss(settings.beta, settings.epsilon), files=files,
                     sample_prompt=render([{"role": "user", "content": records[0].get("prompt")}], template)
                     if isinstance(records[0].get("prompt"), str) else None,
                     describe=f"grpo: {len(prompts):,} prompts x {settings.group_size} completions, rewards "
                              f"{', '.join(settings.rewards)}, beta {settings.beta}, template {template.name}")


TASKS = {"causal": _causal, "instruct": _instruct, "classify": _classify, "dpo": _preference, "orpo": _preference,
         "grpo": _grpo}


def _single_data_file(data_cfg: DataConfig, what: str) -> Path:
    if not data_cfg.path or len(data_cfg.path) != 1:
        raise ValueError(f"data.path: give one file of {what}")
    path = Path(data_cfg.path[0]).expanduser()
    if not path.is_file():
        raise ValueError(f"data.path: {path} is not a file")
    return path


def _expand_targets(model: torch.nn.Module, targets: list[str]) -> list[str]:
    """"all" means every linear layer of the blocks this architecture has (gate only in SwiGLU MLPs)."""
    if "all" not in targets:
        return list(targets)
    present = [t for t in ("q", "k", "v", "o", "gate", "up", "down")
               if any(name.endswith(f".{TARGET_PATHS[t]}") for name, _ in model.named_modules())]
    return present + [t for t in targets if t not in present and t != "all"]


def _with_lora(setup: TaskSetup, base_dir: Path, ft: FinetuneConfig) -> TaskSetup:
    """Freeze the base (in 4-bit NF4 for qlora) and wrap the target layers with trainable adapters."""
    backend = None
    if ft.method == "qlora":
        quant = quantize_model(setup.model, backend=ft.quant_backend)
        backend = quant.backend
        print(f"qlora: {quant}")
    lora_cfg = LoRAConfig(r=ft.lora.r, alpha=ft.lora.alpha, dropout=ft.lora.dropout,
                          targets=_expand_targets(setup.model, ft.lora.targets))
    report = apply_lora(setup.model, lora_cfg.targets, r=lora_cfg.r, alpha=lora_cfg.alpha, dropout=lora_cfg.dropout)
    print(f"lora: {report}")
    inner = setup.files
    template = getattr(inner, "template", None)
    files = LoRAFiles(base_dir, lora_cfg, quant_backend=backend)
    setup.files = with_chat_template(files, template) if template is not None else files
    return setup
