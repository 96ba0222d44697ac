"""ESamp Explorer's engine: load a causal LM, generate n samples per prompt with plain
sampling, ESamp or FIRE, and log per-token novelty. No Streamlit, no plotting here."""

from .config import EsampConfig, FireConfig, RunConfig, SamplingConfig
from .engine import Progress, generate
from .models import DEFAULT_MODEL, LoadedModel, ModelLoadError, UnsupportedArchitectureError, load_model
from .trace import RunTrace

__all__ = [
    "DEFAULT_MODEL", "EsampConfig", "FireConfig", "LoadedModel", "ModelLoadError", "Progress", "RunConfig",
    "RunTrace", "SamplingConfig", "UnsupportedArchitectureError", "generate", "load_model",
]
