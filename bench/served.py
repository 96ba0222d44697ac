"""ESamp through vLLM's own server against the in-process vLLM backend, side by side, rounds
interleaved in one process: does serving cost anything?

    python -m bench.served                       # starts python -m core serve itself, 4x16, 64 tokens, 3 rounds
    python -m bench.served --server http://127.0.0.1:8000 --workload 24x16
    python -m bench.served --quick --json out.json   # 1x2, 8 tokens, one round: checks the plumbing

Variants, on the same prompts (bench/prompts/open_ended.txt, chat template) and sampling (T = 1,
top-k 50, EOS ignored, the same seeds), each timed from the call to its last answer or trace:
- ``inprocess-plain`` / ``inprocess-esamp``: ``core.generate`` on the vLLM backend in this process
  (β = 0.25, light trace), as bench.speed runs them: one run for all the prompts;
- ``inprocess-esamp-each``: the same with each prompt its own run, all at once from threads (what
  the server does: every request is a run);
- ``served-native``: the server's own sampling (no ``vllm_xargs``), one chat request per prompt
  with n samples, all at once from threads, through the ``openai`` client;
- ``served-esamp``: the same with ``vllm_xargs={"esamp_beta": 0.25}``;
- ``routes-plain`` / ``routes-esamp``: ``core.generate`` on the backend "server" (ESamp's own routes
  on the same server, what the app uses with ESAMP_SERVER): the in-process runs, made there, with
  every token's signals streamed back as a trace.
The server and the in-process engine share the machine: only one runs at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model
from core.backends.hardware import describe

from .client import connect, running_server
from . import measured_on, read_prompts
from .speed import parse_workload

VARIANTS = ["inprocess-plain", "inprocess-esamp", "inprocess-esamp-each", "served-native", "served-esamp",
            "routes-plain", "routes-esamp"]
BETA = 0.25


def through_core(lm, variant: str, prompts: list[str], n: int, tokens: int, seed: int) -> float:
    """Seconds for one run, from the call to its trace (on the backend "server": the trace back here)."""
    esamp = not variant.endswith("-plain")
    config = RunConfig(method="esamp" if esamp else "plain", esamp=EsampConfig(beta=BETA, shadow=esamp),
                       sampling=SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, ignore_eos=True), trace="light")
    if variant != "inprocess-esamp-each":
        t0 = time.perf_counter()
        trace = generate(lm, prompts, config)
        assert trace.timings.new_tokens == len(prompts) * n * tokens
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        traces = list(pool.map(lambda p: generate(lm, [p], config), prompts))
    assert sum(t.timings.new_tokens for t in traces) == len(prompts) * n * tokens
    return time.perf_counter() - t0


def served(client, model: str, variant: str, prompts: list[str], n: int, tokens: int, seed: int) -> float:
    """Seconds from the first request to the last answer, every prompt's request at once."""
    extra = {"top_k": 50, "ignore_eos": True}
    if variant == "served-esamp":
        extra["vllm_xargs"] = {"esamp_beta": BETA}

    def ask(i: int):
        messages = [{"role": "user", "content": prompts[i]}]
        return client.chat.completions.create(model=model, messages=messages, n=n, seed=seed * 1000 + i,
                                              max_tokens=tokens, temperature=1.0, extra_body=extra)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    seconds = time.perf_counter() - t0
    assert sum(a.usage.completion_tokens for a in answers) == len(prompts) * n * tokens
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.served", description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="a running `python -m core serve` (default: start one on a free port)")
    ap.add_argument("--workload", default="4x16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1x2, 8 tokens, one round")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.workload, a.tokens, a.rounds = "1x2", 8, 1
    try:
        p, n = parse_workload(a.workload)
    except ValueError as exc:
        ap.error(str(exc))
    prompts = read_prompts()[:p]
    with nullcontext(a.server) if a.server else running_server() as url:
        client, model = connect(url)
        lm, remote = load_model(backend="vllm"), load_model(backend="server", url=url)

        def run(v: str, seed: int) -> float:
            if v.startswith(("inprocess", "routes")):
                return through_core(lm if v.startswith("inprocess") else remote, v, prompts, n, a.tokens, seed)
            return served(client, model, v, prompts, n, a.tokens, seed)

        for v in VARIANTS:  # warm up every variant at this size
            run(v, 0)
        seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(a.rounds):
            for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                seconds[v].append(run(v, r + 1))
                print(f"round {r + 1}/{a.rounds} {v:16s} {p * n * a.tokens / seconds[v][-1]:8.1f} tokens/s",
                      file=sys.stderr, flush=True)
    report = summarize(seconds, p * n * a.tokens)
    out = {"command": "python -m bench.served " + " ".join(argv if argv is not None else sys.argv[1:]),
           "workload": a.workload, "tokens": a.tokens, "rounds": a.rounds, "beta": BETA,
           "dtype": str(lm.dtype).removeprefix("torch."), "machine": describe(), "rows": report,
           "seconds": seconds}
    text = markdown(report, a.workload, out["dtype"])
    print(text)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        a.markdown.write_text(measured_on(out) + text + "\n")
    return 0


def summarize(seconds: dict[str, list[float]], tokens: int) -> list[dict]:
    """Median tokens/s per variant, and within-round ratios: each served variant to its in-process
    counterpart (served ESamp to one in-process run of every prompt), in-process runs of one prompt
    each to that one run, and each ESamp variant to its plain one."""
    def ratio(a: str, b: str) -> float:
        return statistics.median(sb / sa for sa, sb in zip(seconds[a], seconds[b]))

    inprocess_of = {"served-esamp": "inprocess-esamp", "served-native": "inprocess-plain",
                    "inprocess-esamp-each": "inprocess-esamp", "routes-plain": "inprocess-plain",
                    "routes-esamp": "inprocess-esamp"}
    plain_of = {"inprocess-esamp": "inprocess-plain", "inprocess-esamp-each": "inprocess-plain",
                "served-esamp": "served-native", "routes-esamp": "routes-plain"}
    return [{"variant": v, "median_tokens_per_s": statistics.median(tokens / s for s in seconds[v]),
             "ratio_to_inprocess": ratio(v, inprocess_of[v]) if v in inprocess_of else None,
             "esamp_to_plain": ratio(v, plain_of[v]) if v in plain_of else None} for v in VARIANTS]


def markdown(rows: list[dict], workload: str, dtype: str) -> str:
    lines = ["| variant | prompts × samples | dtype | median tokens/s | to its in-process counterpart "
             "| ESamp / its plain |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        e, i = ("" if r[k] is None else f"{r[k]:.3f}" for k in ("esamp_to_plain", "ratio_to_inprocess"))
        lines.append(f"| {r['variant']} | {workload} | {dtype} | {r['median_tokens_per_s']:.1f} | {i} | {e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
