"""The one record a request of an ESamp run carries (``SamplingParams.extra_args[EXTRA_KEY]``), how it is
written and where vLLM checks it: vLLM's door into ESamp, in process and served alike.

- In process (loop.py) each request is written with its record (``request_extra``: its run's key,
  its row, the number of prompts and the whole RunConfig).
- Served (``vllm serve`` with this project installed: pyproject.toml registers the processor and a
  plugin with vLLM's entry points), a request asks for ESamp with ``esamp_*`` keys in its
  ``vllm_xargs`` (OpenAI clients: ``extra_body={"vllm_xargs": {"esamp_beta": 0.25}}``); its n, seed,
  temperature, top_k, top_p, min_p and max_tokens are the ordinary request fields (the settings
  marked ``served`` in core/options.py). A request without such keys is vLLM's own.

Where vLLM takes a request (every processor's ``validate_params``: in the server's own process,
before it fans ``n`` out into n child requests), ``prepare`` checks a served request's keys (a bad
one is an HTTP 400 naming it) and writes its record: a run key of its own, its whole RunConfig, no
row (its n children are given theirs as they join). The request's temperature and filters move
into that RunConfig: ESamp filters and fuses, and vLLM then samples its rows at T = 1 with no
filters of its own, as the in-process backend asks of it (``prepare`` sets those four fields; the
only place that changes a client's SamplingParams). The n children carry the same run, so they
share one distiller; two requests never do. Then every record is checked (``check_extra``).
"""

from __future__ import annotations

import secrets
import uuid

from ...config import EsampConfig, RunConfig, SamplingConfig, ladder_key
from ...options import NO_BOUND, SETTINGS, XARG, bound, get

# What a request may set (core/options.py, ``served``): the fusion and the distiller as
# vllm_xargs["esamp_<field>"], its sampling in vLLM's own fields.
XARGS = {o.xarg: o for o in SETTINGS if o.xarg}
REQUEST = {o.served: o for o in SETTINGS if o.served not in (None, "xarg")}  # SamplingParams field -> option
EXTRA_KEY = "esamp_explorer"  # SamplingParams.extra_args[EXTRA_KEY]: the record
_MARK = "esamp_prepared"  # set here, with a value no client knows: this process rewrote the request
_SECRET = secrets.token_hex(16)
_OURS = (EXTRA_KEY, _MARK)


def validate_params(sampling_params) -> None:
    """vLLM's door for a request (every processor's ``validate_params``, where vLLM takes it; a served
    one's error is an HTTP 400): a served request's ``vllm_xargs`` written as the record (``prepare``),
    and the record checked."""
    extra = sampling_params.extra_args or {}
    if wants_esamp(extra):
        prepare(sampling_params)
    if EXTRA_KEY in extra:
        check_extra(extra[EXTRA_KEY])


def request_extra(key: str, row: int | None, prompts: int, config: RunConfig, record: bool = True,
                  ladder: list[dict] | None = None, together: tuple[str, int] | None = None) -> dict:
    """The one record a request of a run carries for its ESamp (``SamplingParams.extra_args``), in process
    (loop.py) and served (``prepare`` writes it from the client's ``vllm_xargs``). ``row``: the
    request's row in its run (prompt * n + sample), or None for one request that vLLM fans out into
    its run's n child requests (the registry gives each child its row as it joins); ``record``: keep
    every token's signals for a caller to take (a served run has none: it is freed when its rows leave);
    ``ladder``: the configs (as dicts) of runs stepped as this one (``core.config.ladder_key``), rung by
    rung: the request's row counts over them in turn (rung * prompts * n + prompt * n + sample);
    ``together``: a group's key and its number of requests, which vLLM's engine lets in together, once
    all have come (``together_of``)."""
    extra = {"run": key, "row": row, "prompts": prompts, "config": config.to_dict(), "record": record}
    extra |= ({"ladder": ladder} if ladder else {}) | ({"together": list(together)} if together else {})
    return {EXTRA_KEY: extra}


def run_of(params) -> str | None:
    """The key of the ESamp run a request (its SamplingParams) belongs to, or None."""
    extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
    return extra.get("run") if isinstance(extra, dict) else None


def together_of(params) -> tuple[str, int] | None:
    """The group a request goes into vLLM's engine with (``request_extra``'s ``together``: its key and
    its number of requests; a served request's n samples are one), where it has more than one request;
    else None."""
    extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
    group = extra.get("together") if isinstance(extra, dict) else None  # (checked: check_record)
    return (group[0], group[1]) if isinstance(group, list) and len(group) == 2 and group[1] > 1 else None


def check_extra(extra) -> RunConfig:
    """The RunConfig of a request's ESamp record (``request_extra``); ValueError saying what is wrong."""
    return check_record(extra)[0]


def check_record(extra) -> tuple[RunConfig, list[RunConfig]]:
    """A request's ESamp record (``request_extra``) read: its RunConfig and its run's ladder (empty: a run
    of its own); ValueError saying what is wrong."""
    if not isinstance(extra, dict) or not {"run", "row", "prompts", "config"} <= extra.keys():
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] needs run, row, prompts and config.")
    prompts, row = extra["prompts"], extra["row"]
    config = _config(extra["config"], "['config']")
    ladder = extra.get("ladder", [])
    if not isinstance(ladder, list):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]['ladder'] is a list of run configurations.")
    ladder = [_config(c, f"['ladder'][{i}]") for i, c in enumerate(ladder)]
    if any(ladder_key(c) is None or ladder_key(c) != ladder_key(config) for c in ladder):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]['ladder']: runs stepped as one differ in β and its bound "
                         "alone (core.config.ladder_key).")
    rows = prompts * config.sampling.n * max(len(ladder), 1) if isinstance(prompts, int) else 0
    if not isinstance(prompts, int) or not (row is None and prompts == 1 and not ladder or isinstance(row, int)
                                            and 0 <= row < rows):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]: row {row!r} is not one of {prompts!r} prompts' samples.")
    if not isinstance(extra.get("record", True), bool):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]['record'] is true or false.")
    group = extra.get("together", ["", 1])
    if not (isinstance(group, list) and len(group) == 2 and isinstance(group[0], str) and isinstance(group[1], int)
            and not isinstance(group[1], bool) and group[1] >= 1):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]['together'] is a group's key and its number of requests.")
    return config, ladder


def _config(d, where: str) -> RunConfig:
    try:
        return RunConfig.from_dict(d)
    except (KeyError, TypeError, ValueError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]{where} is not a run configuration ({what}).") from exc


def wants_esamp(extra: dict | None) -> bool:
    """Whether a request's extra args hold ``esamp_*`` keys for ``prepare`` (a request that carries only
    the record, in process, is checked as it is)."""
    return bool(extra) and any(isinstance(k, str) and k.startswith(XARG) and k != EXTRA_KEY for k in extra)


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
    key = uuid.uuid4().hex  # its n samples go into vLLM's engine together (internals, fact 13)
    extra.update(request_extra(key, None, 1, config, record=False, together=(key, config.sampling.n)))
    return config


def params_of(config: RunConfig) -> dict:
    """The SamplingParams fields of one prompt's request that asks a server for ``config`` (``prepare``
    reads them back into the same run): its sampling in vLLM's own fields and, for ESamp, its
    ``vllm_xargs`` in ``extra_args``: β always, every other setting where it is not EsampConfig's default."""
    out = {name: get(config, o.field) for name, o in REQUEST.items()}
    if config.method == "esamp":
        default = RunConfig()
        given = {x: get(config, o.field) for x, o in XARGS.items()
                 if o.name == "beta" or get(config, o.field) != get(default, o.field)}
        out["extra_args"] = {x: NO_BOUND if v is None else v for x, v in given.items()}
    return out


def _esamp(extra: dict) -> EsampConfig:
    unknown = sorted(k for k in extra if isinstance(k, str) and k.startswith(XARG) and k not in {*XARGS, *_OURS})
    if unknown:
        raise ValueError(f"vllm_xargs: unknown ESamp key {unknown[0]!r}; the keys are {', '.join(XARGS)}.")
    given = {}
    for x, value in extra.items():
        o = XARGS.get(x)
        if o is None:
            continue
        try:  # vllm_xargs cannot carry null (max_kl "none"), nor true and false (its pydantic type makes them 1, 0)
            if o.type is None or (o.type is bound and isinstance(value, str)):
                value = o.read(str(value))
            given[o.name] = value
            EsampConfig(**{o.name: value})
        except (TypeError, ValueError) as exc:
            hint = f' For no bound: "{NO_BOUND}".' if o.type is bound else ""
            raise ValueError(f"vllm_xargs[{x!r}]: {exc}{hint}") from None
    return EsampConfig(**given)


def _sampling(params) -> SamplingConfig:
    if params.temperature < 1e-5:
        raise ValueError("ESamp samples: a request that asks for it needs a temperature above 0 (it has "
                         f"{params.temperature}).")
    given = {o.name: getattr(params, name) for name, o in REQUEST.items()}
    given["seed"] = given["seed"] if given["seed"] is not None else secrets.randbelow(2**31)
    given["max_new_tokens"] = given["max_new_tokens"] or 16
    given["top_k"] = max(given["top_k"], 0)  # vLLM's "off" is -1 or 0
    try:
        return SamplingConfig(**given)
    except ValueError as exc:
        raise ValueError(f"ESamp cannot run this request's sampling: {exc}") from None
