"""Methods PEFT already implements: the bridge runs them through ``init_lora_weights``.

They draw from torch's global generator, so the bridge seeds it inside
``torch.random.fork_rng`` (the caller's RNG state is left untouched).
"""

from .registry import register_peft

register_peft("lora", True, residual=False,
              summary="LoRA (PEFT default): A Kaiming-uniform(a=√5), B = 0; base unchanged")
register_peft("gaussian", "gaussian", residual=False,
              summary="PEFT 'gaussian': A ~ N(0, 1/r²), B = 0; base unchanged")
register_peft("pissa", "pissa", residual=True, full_precision=True,
              summary="PiSSA (PEFT): A, B from the r largest singular triplets; frozen residual (pissa_niter_N: fast SVD)")
register_peft("olora", "olora", residual=True, full_precision=True,
              summary="OLoRA (PEFT): A, B from a QR decomposition of W; frozen residual")
# full_precision: PEFT casts its orthogonal factors to the base weight's dtype (uint8 on a 4-bit layer)
register_peft("peft-orthogonal", "orthogonal", residual=False, full_precision=True,
              summary="PEFT 'orthogonal': orthogonal A, B with B·A = 0; base unchanged")
register_peft("mica", "mica", residual=False, full_precision=True,
              summary="MiCA (PEFT): B = the r minor left singular vectors of W (frozen), A = 0 (trained); base unchanged")
