"""Put on PYTHONPATH, this makes bitsandbytes believe the CPU has AVX512-BF16.

bitsandbytes then takes, at import, the path that only such CPUs take (Zen 4, Sapphire Rapids):
it asks the hub for an optional kernel, and offline two libraries log about it. The terminal
tests run every command with this, so the silence they check holds on any machine's CPU.
"""

import importlib.abc
import importlib.machinery
import sys


class _PretendBf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # noqa: ARG002 - the finder protocol's signature
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PretendBf16())
