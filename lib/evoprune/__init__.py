"""evoprune: evolutionary layer-wise pruning of GPT-2-class language models."""
__version__ = "0.1.0"


class EvopruneError(Exception):
    """A user-facing error: bad input or a missing resource. Its message says how to fix it."""
