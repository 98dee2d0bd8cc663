"""Pretraining end to end: data folder -> tokenizer -> model -> the training loop -> artifacts.

This wires the pieces together for `lmforge train`; each piece lives in its own module.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..data.config import DataConfig
from ..data.corpus import default_corpus_files
from ..data.loader import TokenBatches
from ..data.prepare import ensure_prepared
from ..data.shards import read_meta
from ..ingest.config import IngestConfig
from ..model.config import ModelConfig, with_vocab
from ..model.gpt import GPT
from ..tokenizer import load_tokenizer
from ..utils.device import resolve_device, resolve_precision
from . import checkpoint as ckpt
from .config import TrainConfig
from .loop import Trainer, TrainResult


def prepare_data(data: DataConfig, ingest_cfg: IngestConfig | None = None, tokenizer_spec: str | None = None) -> Path:
    """The prepared data folder for this run (raw paths are tokenized once and cached)."""
    sources = data.path if data.path else default_corpus_files(data.default_corpus_bytes)
    if not data.path:
        print(f"data: no data.path given, using the built-in demo corpus "
              f"({len(sources)} files of Python's standard library)")
    cache_dir = Path(data.cache_dir).expanduser()
    return ensure_prepared([Path(s).expanduser() for s in sources], cache_dir,
                           tokenizer=tokenizer_spec or data.tokenizer, vocab_size=data.vocab_size,
                           val_fraction=data.val_fraction, seed=data.seed, ingest_cfg=ingest_cfg)


def build_model(model_cfg: ModelConfig, vocab_size: int) -> GPT:
    """A fresh model, or the weights of an lmforge checkpoint when model.init_from is set."""
    if model_cfg.init_from:
        model = ckpt.load_model_from_checkpoint(Path(model_cfg.init_from).expanduser())
        model.set_dropout(model_cfg.dropout)
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"model.init_from: the checkpoint's vocabulary ({model.config.vocab_size}) is "
                             f"smaller than the data's ({vocab_size}); prepare the data with its tokenizer")
        return model
    return GPT(with_vocab(model_cfg, vocab_size))


def run_pretraining(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig,
                    ingest_cfg: IngestConfig | None = None, config_yaml: str | None = None) -> TrainResult:
    random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    resolve_precision(train_cfg.precision, device, n_params=0)  # an impossible choice fails before data prep
    # A run that starts from a checkpoint must read the data with that checkpoint's tokenizer.
    tokenizer_spec = str(Path(model_cfg.init_from).expanduser()) if model_cfg.init_from else None
    data_dir = prepare_data(data_cfg, ingest_cfg, tokenizer_spec)
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(data_dir)
    model = build_model(model_cfg, tokenizer.vocab_size)
    precision = resolve_precision(train_cfg.precision, device, model.num_params())
    block = model.config.block_size
    train_batches = TokenBatches(data_dir, "train", block, train_cfg.batch_size, seed=train_cfg.seed)
    val_batches = (TokenBatches(data_dir, "val", block, train_cfg.batch_size, seed=train_cfg.seed)
                   if meta["val_tokens"] > 0 else None)

    run_dir = Path(train_cfg.out_dir).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    if config_yaml is not None:
        (run_dir / "config.yaml").write_text(config_yaml)
    print(f"model: {model.num_params():,} parameters ({model.num_params(exclude_embeddings=True):,} outside the "
          f"embeddings), {model.config.n_layer} layers x {model.config.n_embd} wide, context {block}")
    print(f"data: {data_dir} -- {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
          f"tokenizer {meta['tokenizer']} ({tokenizer.vocab_size:,} tokens); "
          f"{train_batches.batches_per_epoch:,} batches per epoch")
    print(f"device: {device}, precision: {precision}" +
          (" (chosen by precision: auto)" if train_cfg.precision == "auto" else ""))
    trainer = Trainer(model, tokenizer, train_batches, val_batches, train_cfg, run_dir, device, precision)
    return trainer.fit()
