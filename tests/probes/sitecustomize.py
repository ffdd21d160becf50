"""Put on a child's PYTHONPATH by the terminal tests; the child's environment says what it does.

- ``INILORA_TEST_PRETEND_BF16=1``: bitsandbytes believes the CPU has AVX512-BF16, so it takes, at
  import, the path that only such CPUs take (Zen 4, Sapphire Rapids): it asks the hub for an
  optional kernel, and offline two libraries log about it. The silence test_terminal checks then
  holds on any machine's CPU.
- ``INILORA_TEST_MODEL_LOADS=<file>``: every ``PreTrainedModel.from_pretrained`` call (every model
  load goes through it: inilora.models.loading, the embedded copies) is counted and written to
  ``<file>`` at exit, so test_cli_outside proves a refusal loaded no model by counting, not by a wall
  time a busy machine stretches.
"""

import atexit
import importlib.abc
import importlib.machinery
import os
import sys


def _after_import(name, patch):
    """Run ``patch(module)`` once module ``name`` has been imported, however it is imported."""

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):  # noqa: ARG002 - the finder protocol's signature
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                patch(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())


def _pretend_bf16(module):
    module.has_avx512bf16 = lambda: True


LOADS = []


def _count_loads(module):
    real = module.PreTrainedModel.__dict__["from_pretrained"].__func__

    def from_pretrained(cls, *args, **kwargs):
        LOADS.append(f"{cls.__name__}.from_pretrained({args[0] if args else ''})")
        return real(cls, *args, **kwargs)

    module.PreTrainedModel.from_pretrained = classmethod(from_pretrained)


def _write_loads():
    with open(os.environ["INILORA_TEST_MODEL_LOADS"], "w") as f:
        f.write("\n".join(LOADS))


if os.environ.get("INILORA_TEST_PRETEND_BF16") == "1":
    _after_import("bitsandbytes.functional", _pretend_bf16)
if os.environ.get("INILORA_TEST_MODEL_LOADS"):
    _after_import("transformers.modeling_utils", _count_loads)
    atexit.register(_write_loads)
