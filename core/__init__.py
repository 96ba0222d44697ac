"""ESamp Explorer's core: load a causal LM, generate n samples per prompt with plain sampling,
ESamp or FIRE, and log per-token novelty. No Streamlit, no plotting here.

    esamp/      the method over tensors: filters, distiller, fusion, signals, per-run pipeline
    backends/   where a model runs: transformers (hf/) or vLLM (vllm/), one interface
    trace.py    the run trace every layer reads
"""

from .backends import answer_logprobs, check_runs, generate, generate_runs, load_model
from .backends.base import LanguageModel, ModelLoadError, Progress, UnsupportedArchitectureError, encode_prompts
from .backends.embedded import DEFAULT_MODEL
from .config import EsampConfig, FireConfig, RunConfig, SamplingConfig, beta_ladder, temperature_ladder
from .trace import RunTrace

__all__ = [
    "DEFAULT_MODEL", "EsampConfig", "FireConfig", "LanguageModel", "ModelLoadError", "Progress", "RunConfig",
    "RunTrace", "SamplingConfig", "UnsupportedArchitectureError", "answer_logprobs", "beta_ladder", "check_runs",
    "encode_prompts", "generate", "generate_runs", "load_model", "temperature_ladder",
]
