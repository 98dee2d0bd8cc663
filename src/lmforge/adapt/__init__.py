"""Model surgery for fine-tuning: LoRA adapters, 4-bit NF4 bases (QLoRA), task heads. No training loops here."""
