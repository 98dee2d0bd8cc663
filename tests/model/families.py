"""Tiny configs of the two model families, shared by the model tests."""

TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50)
LLAMA_STYLE = dict(n_kv_head=2, norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)


def tiny_families(**overrides) -> dict[str, dict]:
    """{"gpt2": kwargs, "llama": kwargs} for ModelConfig, with `overrides` applied to both."""
    return {"gpt2": dict(TINY, **overrides), "llama": dict(TINY, **LLAMA_STYLE, **overrides)}
