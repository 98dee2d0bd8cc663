"""lmforge: from a folder of text to a trained GPT-style language model, every step readable.

The command line (`lmforge train`, `prepare`, `init`, `generate`, `report`) is the main entry
point; the library underneath is importable piece by piece, e.g.

    from lmforge.model.config import preset_config
    from lmforge.model.gpt import GPT
    model = GPT(preset_config("llama-tiny", vocab_size=4096))

Importing this package stays cheap: it does not import torch.
"""

__version__ = "0.1.0"
