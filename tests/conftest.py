"""Shared test fixtures.

The model cache: unless ``INILORA_CACHE`` is already set by the environment, the suite uses a
fresh temporary cache root for the whole session (removed at the end), so the embedded SmolLM2's
safetensors copy is built once per session (~20-45 s on 2 cores) and never touches
``~/.cache/inilora``. Set ``INILORA_CACHE`` yourself to reuse a built copy across runs. The
variable is set at import time, so pytest-xdist workers (started later) inherit it and share the
one copy (its build is under a file lock).

Session fixtures (``smollm2``, ``minilm``) are shared by every test: do not modify them in place
(PEFT's ``get_peft_model`` does!) — use ``smollm2_fresh`` / ``minilm_fresh`` (a new load from the
cache, well under a second) or ``copy.deepcopy``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# The suite never reaches a model hub: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist each worker gets one intra-op thread: two workers × two OpenMP threads on
# two cores oversubscribe, and OpenMP's spin-waits then slow small ops down by 10-100×.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

_OWNED_CACHE: str | None = None
_OWNER_PID = os.getpid()
if not os.environ.get("INILORA_CACHE"):
    _OWNED_CACHE = tempfile.mkdtemp(prefix="inilora-test-cache-")
    os.environ["INILORA_CACHE"] = _OWNED_CACHE

# an init method registered from outside the package, as a user's plugin is: the registry contract
# (tests/test_contract.py) must cover it without naming it
import _extension  # noqa: E402,F401


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    # Only the process that created the temp cache removes it (with xdist: the controller, after
    # the workers are done; workers see the variable already set and own nothing).
    if _OWNED_CACHE and os.getpid() == _OWNER_PID and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct: fp32 LlamaForCausalLM, eval mode. Shared: don't mutate."""
    from inilora.models import load_model

    model = load_model("embedded:smollm2")
    model.eval()
    return model


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    from inilora.models import load_tokenizer

    return load_tokenizer("embedded:smollm2")


@pytest.fixture
def smollm2_fresh(smollm2):
    """A new fp32 SmolLM2 from the safetensors copy (safe to modify)."""
    from inilora.models import load_model

    return load_model("embedded:smollm2")


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2: fp32 BertModel (bare encoder), eval mode. Shared: don't mutate."""
    from inilora.models import load_model

    model = load_model("embedded:minilm")
    model.eval()
    return model


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from inilora.models import load_tokenizer

    return load_tokenizer("embedded:minilm")


@pytest.fixture
def minilm_fresh():
    """A new fp32 MiniLM encoder (safe to modify)."""
    from inilora.models import load_model

    return load_model("embedded:minilm")


@pytest.fixture(scope="session")
def tiny():
    """Factory for tiny random models: ``tiny("gpt2" | "llama-gqa" | "roberta" | "bert", seed=0,
    dtype=torch.float32)``; every call builds a new model (safe to modify)."""
    from inilora.models import tiny_model

    return tiny_model
