"""The tables of docs/results.md and README.md, copied from what the benchmarks wrote to bench/results/.

A table in either sits between two markers that name where it comes from::

    <!-- bench/results/quality.md table 1 -->
    | method | ... |
    <!-- end -->

and this script rewrites every such block from that file's N-th table (1-based), so no number in
the docs is typed by hand. A benchmark run updates bench/results/; then:

    python -m bench.docs            # rewrite docs/results.md and README.md
    python -m bench.docs --check    # exit 1 when it is out of date (a test runs this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DOC = ROOT / "docs" / "results.md"
DOCS = [RESULTS_DOC, ROOT / "README.md"]
BLOCK = re.compile(r"(<!-- (bench/results/[\w.-]+\.md) table (\d+) -->\n)(.*?)(<!-- end -->)", re.S)


def tables(markdown: str) -> list[str]:
    """The tables of a markdown text, in order: runs of lines that start with '|'."""
    return [m.group(0) for m in re.finditer(r"(?:^\|.*\n?)+", markdown, re.M)]


def render(doc: str, root: Path = ROOT) -> str:
    """``doc`` with every marked block replaced by its source table."""
    def table(m: re.Match) -> str:
        source, index = root / m.group(2), int(m.group(3))
        found = tables(source.read_text(encoding="utf-8"))
        if not 1 <= index <= len(found):
            raise ValueError(f"{m.group(2)} has {len(found)} tables; docs/results.md asks for table {index}.")
        return m.group(1) + found[index - 1].rstrip("\n") + "\n" + m.group(5)

    return BLOCK.sub(table, doc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only say whether the docs are up to date")
    a = p.parse_args(argv)
    stale = []
    for path in DOCS:
        doc = path.read_text(encoding="utf-8")
        new = render(doc)
        if new == doc:
            continue
        stale.append(path.relative_to(ROOT))
        if not a.check:
            path.write_text(new, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)} ({len(BLOCK.findall(doc))} tables)")
    if a.check and stale:
        print(f"{', '.join(map(str, stale))} out of date: run python -m bench.docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
