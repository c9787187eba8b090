"""corral: from a model file to a production LLM endpoint."""

from corral.outputs import CompletionOutput, RequestOutput
from corral.sample.params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import corral` (and `corral --help`) must not import torch.
    if name == "LLM":
        from corral.llm import LLM

        return LLM
    raise AttributeError(name)
