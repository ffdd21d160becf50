"""One exception type for bad input, so callers can catch our refusals apart from bugs."""


class InitError(ValueError):
    """Raised before any work when the input cannot give a correct result.

    The message names the problem and the fix.
    """


class FingerprintMismatch(InitError):
    """A residual-method adapter met a base model other than the one it was made on."""
