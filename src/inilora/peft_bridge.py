"""The old import path of :mod:`inilora.bridge` (kept so ``from inilora.peft_bridge import ...`` works)."""

from .bridge import *  # noqa: F403
from .bridge import __all__  # noqa: F401
