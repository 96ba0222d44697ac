"""ESamp for requests that come through vLLM's own server (``vllm serve`` with this project
installed: pyproject.toml registers the processor and a plugin with vLLM's entry points).

A request asks for ESamp with ``esamp_*`` keys in its ``vllm_xargs`` (OpenAI clients:
``extra_body={"vllm_xargs": {"esamp_beta": 0.25}}``); its n, seed, temperature, top_k, top_p,
min_p and max_tokens are the ordinary request fields. A request without such keys is vLLM's own.

Where vLLM checks a request (``VllmProcessor.validate_params``, in the server's own process, before
it fans ``n`` out into n child requests), ``prepare`` checks the keys (a bad one is an HTTP 400
naming it) and writes the request's ESamp record, the same record an in-process request carries
(``state.request_extra``: a run key of its own, its whole RunConfig, no row: its n children are
given theirs as they join). The request's temperature and filters move into that RunConfig:
ESamp filters and fuses, and vLLM then samples its rows at T = 1 with no filters of its own, as
the in-process backend asks of it (``prepare`` sets those four fields; the only place that
changes a client's SamplingParams). The n children carry the same run, so they share one
distiller; two requests never do.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import fields

from ...config import EsampConfig, RunConfig, SamplingConfig
from .state import EXTRA_KEY, request_extra

PREFIX = "esamp_"
# What a request may set, as esamp_<field>: the fusion and the distiller; scope and priming have
# no meaning for one served request (one prompt), overlap is the server's to choose.
FIELDS = tuple(f.name for f in fields(EsampConfig) if f.name not in ("scope", "prime", "overlap", "shadow"))
XARGS = tuple(PREFIX + f for f in FIELDS)
SWITCHES = {f.name for f in fields(EsampConfig) if f.type in (bool, "bool")} & set(FIELDS)
_SWITCH_VALUES = {"true": True, "1": True, "false": False, "0": False}
NO_BOUND = "none"  # esamp_max_kl: no bound on a token's push (the paper's fusion)
_MARK = "esamp_prepared"  # set here, with a value no client knows: this process rewrote the request
_SECRET = secrets.token_hex(16)
_OURS = (EXTRA_KEY, _MARK)


def wants_esamp(extra: dict | None) -> bool:
    """Whether a request's extra args hold ``esamp_*`` keys for ``prepare`` (a request that carries only
    the record, in process, is checked as it is)."""
    return bool(extra) and any(isinstance(k, str) and k.startswith(PREFIX) and k != EXTRA_KEY for k in extra)


def prepare(params) -> RunConfig:
    """Check an ESamp request's ``vllm_xargs`` and write its record, with its sampling moved into the
    run (see the module's doc); ValueError naming the bad field. Called again for each prompt of a
    request that shares one SamplingParams: each prompt gets a run of its own."""
    extra = params.extra_args
    if extra.get(_MARK) == _SECRET:  # a second prompt of the same request: already rewritten here
        config = RunConfig.from_dict(extra[EXTRA_KEY]["config"])
    else:  # (a client's own esamp_explorer is overwritten)
        config = RunConfig(method="esamp", esamp=_esamp(extra), sampling=_sampling(params), trace="light")
        extra[_MARK] = _SECRET
        params.temperature, params.top_k, params.top_p, params.min_p = 1.0, 0, 1.0, 0.0
    extra.update(request_extra(uuid.uuid4().hex, None, 1, config, record=False))
    return config


def params_of(config: RunConfig) -> dict:
    """The SamplingParams fields of one prompt's request that asks a server for ``config`` (``prepare``
    reads them back into the same run): its sampling in the ordinary fields and, for ESamp, its
    ``vllm_xargs`` in ``extra_args``: β always, every other field where it is not EsampConfig's default."""
    sc = config.sampling
    out = {"n": sc.n, "seed": sc.seed, "temperature": sc.temperature, "top_k": sc.top_k, "top_p": sc.top_p,
           "min_p": sc.min_p, "max_tokens": sc.max_new_tokens, "ignore_eos": sc.ignore_eos}
    if config.method == "esamp":
        default = EsampConfig()
        given = {name: getattr(config.esamp, name) for name in FIELDS
                 if name == "beta" or getattr(config.esamp, name) != getattr(default, name)}
        out["extra_args"] = {PREFIX + k: NO_BOUND if k == "max_kl" and v is None else v for k, v in given.items()}
    return out


def _esamp(extra: dict) -> EsampConfig:
    unknown = sorted(k for k in extra if isinstance(k, str) and k.startswith(PREFIX) and k not in XARGS + _OURS)
    if unknown:
        raise ValueError(f"vllm_xargs: unknown ESamp key {unknown[0]!r}; the keys are {', '.join(XARGS)}.")
    given = {k[len(PREFIX):]: v for k, v in extra.items() if k in XARGS}
    if isinstance(given.get("max_kl"), str) and given["max_kl"].lower() == NO_BOUND:
        given["max_kl"] = None  # vllm_xargs cannot carry null
    for name in SWITCHES & given.keys():  # nor true and false: its pydantic type makes them 1 and 0
        given[name] = _SWITCH_VALUES.get(str(given[name]).lower(), given[name])
    for name, value in given.items():
        try:
            EsampConfig(**{name: value})
        except (TypeError, ValueError) as exc:
            hint = f' For no bound: "{NO_BOUND}".' if name == "max_kl" else ""
            raise ValueError(f"vllm_xargs[{PREFIX + name!r}]: {exc}{hint}") from None
    return EsampConfig(**given)


def _sampling(params) -> SamplingConfig:
    if params.temperature < 1e-5:
        raise ValueError("ESamp samples: a request that asks for it needs a temperature above 0 (it has "
                         f"{params.temperature}).")
    seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
    try:
        return SamplingConfig(n=params.n, max_new_tokens=params.max_tokens or 16, temperature=params.temperature,
                              top_k=max(params.top_k, 0), top_p=params.top_p, min_p=params.min_p, seed=seed,
                              ignore_eos=params.ignore_eos)
    except ValueError as exc:
        raise ValueError(f"ESamp cannot run this request's sampling: {exc}") from None
