"""Benchmarks: each measures through the public API and writes its report (bench/results)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

PROMPTS_FILE = Path(__file__).parent / "prompts" / "open_ended.txt"  # the benchmarks' open-ended prompts


def read_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """One prompt a line, blank lines left out."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def measured_on(report: dict, command: str | None = None) -> str:
    """The line above a report's tables, so that every figure says where it was measured: the CPU (as
    ``core.backends.hardware.cpu_name`` names it), how many, a GPU if any (or the server a model ran on),
    the model's dtype where the report has one, torch's version and the command."""
    m = report.get("machine") or {}  # an early report may lack it, or some of its fields
    if m.get("server"):
        where = f"On the server at {m['server']}"
    else:
        gpu = f", {m['cuda']}" if m.get("cuda") else ""
        where = f"On {m.get('cpu', 'an unrecorded CPU')} ({m.get('cpus', '?')} CPUs{gpu})"
    dtype = m.get("dtype") or report.get("dtype")
    where += (f", the model in {dtype}" if dtype else "") + (f", torch {m['torch']}" if m.get("torch") else "")
    return f"{where}: `{command or report.get('command', 'an unrecorded command')}`.\n\n"


def alternate(module: str, argv: Sequence[str] | None, pairs: int, ways: Sequence[Any], run: Callable[[Any], dict],
              key: str, say: Callable[[Any, dict], str]) -> dict:
    """The report of ``python -m module argv``: ``run(way)`` for each of ``ways`` in turn, ``pairs`` times (fresh
    processes, so that a drift of the machine's speed falls on every way alike), each result with ``{key: way}``
    and ``say``'s line printed as it comes; the first result's ``machine`` is the report's."""
    processes = []
    for _ in range(pairs):
        for way in ways:
            result = run(way)
            processes.append({key: way, **result})
            print(say(way, result), flush=True)
    command = f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)
    return {"command": command, "machine": processes[0]["machine"], "processes": processes}


def publish(report: dict, json_path: Path | None, markdown_path: Path | None,
            markdown: Callable[[dict], str]) -> int:
    """Write `report` as JSON and as its markdown table where asked, print the table; the exit status 0."""
    if json_path:
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    if markdown_path:
        markdown_path.write_text(table)
    print(table)
    return 0
