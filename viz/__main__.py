"""``python -m viz report RUN.json [RUN2.json ...] -o report.html``"""

import argparse
import os
import sys
from pathlib import Path

from core.scoring import recorded_perplexities
from core.trace import RunTrace

from .heatmap import SIGNALS
from .report import write_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m viz")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="a self-contained HTML report of one run or a comparison")
    r.add_argument("runs", nargs="+", help="trace JSON files written by `python -m core generate --json`")
    r.add_argument("-o", "--output", default="report.html")
    r.add_argument("--signal", choices=list(SIGNALS), default="rel_novelty")
    r.add_argument("--images", metavar="DIR", help="also write each figure as PNG and SVG here (needs kaleido "
                   "and a Chrome or Chromium, e.g. Debian's chromium)")
    a = ap.parse_args(argv)
    output = Path(a.output)
    if output.is_dir() or not output.parent.is_dir():
        ap.error(f"-o {output}: " + ("is a directory; give a file name." if output.is_dir()
                                      else f"the directory {output.parent} does not exist."))
    try:
        traces = [RunTrace.load(p) for p in a.runs]
    except (OSError, ValueError) as exc:
        print(f"error: cannot read a run trace: {exc}", file=sys.stderr)
        return 2
    try:
        # each run's perplexities from the log-probabilities its trace recorded (a light trace has none: "–")
        recorded = [recorded_perplexities(t) for t in traces]
        perplexities = recorded if any(r is not None for r in recorded) else None
        for p in write_report(traces, a.output, images=a.images, signal=a.signal, perplexities=perplexities):
            print(f"wrote {p}")
    except Exception as exc:  # one line, never a traceback; ESAMP_DEBUG=1 shows it
        if os.environ.get("ESAMP_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set ESAMP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
