"""Benchmarks: each measures through the public API and writes its report (bench/results)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

PROMPTS_FILE = Path(__file__).parent / "prompts" / "open_ended.txt"  # the benchmarks' open-ended prompts


def read_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """One prompt a line, blank lines left out."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
