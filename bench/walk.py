"""Follow a run's settings from where a user gives them to the ESamp state that uses them in vLLM's
logits processor, as a reader following them through the code would: which of the project's files
the settings pass through, in order, and which the walk comes back to.

    python -m bench.walk            # the command line, core.generate and a served request (vllm_xargs)
    python -m bench.walk --json /tmp/walk.json

Each door runs for real on the embedded model on the vLLM backend (1 prompt, 2 samples, 2 tokens) with
a profiler on every thread that notes each call into the project's own code that is handed the
settings: a RunConfig (or a list of them), the request's ESamp record (``request.EXTRA_KEY``), the
SamplingParams that carry it, or a served request's ``esamp_*`` keys; the settings' own methods
(core/config.py: their checks, to_dict) are their type, read once, not steps. The walk ends where the
run's state is made (``state.RunState.of``). "Distinct files" counts the files on the way; "entered
again" the files the walk comes back to after it left them.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = str(ROOT / "core") + "/"
OWN = str(ROOT / "core" / "config.py")  # the settings' own type
END = ("state.py", "of")  # the run's state is made: the settings have arrived


def carries(value, kinds) -> bool:
    """Whether ``value`` is, or holds at its top level, the run's settings."""
    run_config, extra_key = kinds
    if isinstance(value, run_config):
        return True
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], run_config):
        return True
    if isinstance(value, dict):
        return extra_key in value or {"run", "config"} <= value.keys() or any(
            isinstance(k, str) and k.startswith("esamp_") for k in value)
    extra = getattr(value, "extra_args", None)
    return isinstance(extra, dict) and carries(extra, kinds)


class Walk:
    """A profiler that notes (file, function) for each call into core/ handed the settings, on this
    thread, threads started while it is on, and ``engine``'s driver thread (the in-process engine's
    steps, where the processor runs)."""

    def __init__(self, engine=None):
        from core import RunConfig
        from core.backends.vllm.request import EXTRA_KEY

        self.kinds = (RunConfig, EXTRA_KEY)
        self.engine = engine
        self.steps: list[tuple[str, str]] = []
        self.done = threading.Event()

    def __call__(self, frame, event, arg):
        if event != "call" or self.done.is_set():
            return
        path = frame.f_code.co_filename
        if not path.startswith(CORE) or path == OWN:
            return
        code = frame.f_code
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if not any(carries(frame.f_locals.get(n), self.kinds) for n in names):
            return
        step = (path[len(str(ROOT)) + 1:], code.co_name)
        if not self.steps or self.steps[-1] != step:
            self.steps.append(step)
        if (Path(path).name, code.co_name) == END:
            self.done.set()

    def __enter__(self):
        threading.setprofile(self)
        sys.setprofile(self)
        if self.engine is not None:
            self.engine.call(lambda _: sys.setprofile(self))
        return self

    def __exit__(self, *exc):
        if self.engine is not None:
            self.engine.call(lambda _: sys.setprofile(None))
        sys.setprofile(None)
        threading.setprofile(None)


def summary(steps: list[tuple[str, str]]) -> dict:
    files: list[str] = []
    for path, _ in steps:
        if not files or files[-1] != path:
            files.append(path)
    seen, returns = set(), []
    for path in files:
        if path in seen:
            returns.append(path)
        seen.add(path)
    return {"calls": [f"{p}:{f}" for p, f in steps], "files": files, "distinct": len(seen), "returns": returns,
            "arrived": bool(steps) and (Path(steps[-1][0]).name, steps[-1][1]) == END}


def from_cli() -> dict:
    """``python -m core generate`` on the vLLM backend (it loads its own engine, inside the walk)."""
    from core.cli import main

    with Walk() as walk:
        main(["generate", "Name a colour.", "--backend", "vllm", "-n", "2", "--max-new-tokens", "2", "--beta", "1",
              "--quiet"])
    return summary(walk.steps)


def from_generate(lm) -> dict:
    """``core.generate`` on a loaded vLLM model: the public API's door, below the command line's."""
    from core import EsampConfig, RunConfig, SamplingConfig, generate

    config = RunConfig(esamp=EsampConfig(beta=1.0), sampling=SamplingConfig(n=2, max_new_tokens=2))
    with Walk(lm.engine) as walk:
        generate(lm, ["Name a colour."], config)
    return summary(walk.steps)


def from_served(lm) -> dict:
    """A request as vLLM's server hands it to the engine: SamplingParams with ``esamp_*`` keys in extra_args."""
    from vllm import SamplingParams

    from core.backends.vllm.engine import Request, Submission

    params = SamplingParams(n=2, max_tokens=2, seed=0, temperature=1.0, extra_args={"esamp_beta": 1.0})
    with Walk(lm.engine) as walk:
        sub = lm.engine.submit(Submission([[Request("walk", lm.tokenizer.encode("Name a colour."), params)]]))
        deadline = time.monotonic() + 600
        while not sub.finished and time.monotonic() < deadline:
            sub.wait(1.0)
    return summary(walk.steps)


def markdown(report: dict) -> str:
    lines = ["| door | files on the way | distinct files | files entered again |", "|---|---|---:|---|"]
    for door, r in report.items():
        way = " → ".join(Path(f).name for f in r["files"]) + ("" if r["arrived"] else " (no run state reached)")
        again = ", ".join(Path(f).name for f in dict.fromkeys(r["returns"])) or "none"
        lines.append(f"| {door} | {way} | {r['distinct']} | {again} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.walk", description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    report = {"command line": from_cli()}
    from core import load_model

    lm = load_model(backend="vllm")
    report.update({"core.generate": from_generate(lm), "served request": from_served(lm)})
    lm.close()
    print(markdown(report))
    for door, r in report.items():
        print(f"\n{door}:\n  " + "\n  ".join(r["calls"]))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
