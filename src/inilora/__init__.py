"""inilora: better starting points for LoRA, on top of PEFT.

    model = inilora.get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                   method="inilora", seed=0)
    ...train with any trainer, save_pretrained as usual...
    inilora.export(model, "out/plain", layout="plain")   # loads with vanilla PEFT on the unmodified base
"""

__version__ = "0.1.0"

from .errors import FingerprintMismatch, InitError  # noqa: E402
from .methods import available_methods, get_method  # noqa: E402
from .peft_bridge import get_peft_model, load, original  # noqa: E402
from .export import export  # noqa: E402

__all__ = [
    "FingerprintMismatch", "InitError", "available_methods", "export", "get_method", "get_peft_model",
    "load", "original", "__version__",
]
