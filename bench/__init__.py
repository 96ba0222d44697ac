"""Benchmarks: each measures through the public API and writes its report (bench/results)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


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
