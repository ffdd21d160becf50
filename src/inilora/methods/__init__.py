"""The registry of initialization methods; importing this package registers them all."""

from . import data_driven, inilora, peft_backed, random_inits, svd  # noqa: F401  (registration side effects)
from .registry import (
    InitResult,
    Method,
    available_methods,
    get_method,
    methods,
    register,
)

__all__ = ["InitResult", "Method", "available_methods", "get_method", "methods", "register"]
