"""From starting the app to the first and the second finished default Generate, per backend, with
and without loading the default model in the background when the first page opens.

    python -m bench.app_start --json bench/results/app-start.json --markdown bench/results/app-start.md

Each case starts a fresh app (``streamlit run``, a throwaway history), opens Explore in Debian's
chromium, waits ``--think`` seconds (a teacher reading the page or typing a prompt), clicks
Generate and waits for the finished page, then does it again. Times are from the start of the
app process; a case's backend is the app's default (``ESAMP_BACKEND``), preloading
``ESAMP_PRELOAD``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .screenshot import generate_once, launch, start_app, stop_app


def one_case(backend: str, preload: bool, think: float) -> dict:
    from playwright.sync_api import sync_playwright

    t0 = time.perf_counter()
    proc, url = start_app(Path(tempfile.mkdtemp()) / "history.sqlite3", ESAMP_BACKEND=backend,
                          ESAMP_PRELOAD="1" if preload else "0")
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("button", name="Generate").wait_for(timeout=120_000)
            shown = time.perf_counter() - t0
            page.wait_for_timeout(think * 1000)
            first = generate_once(page, url, reload=False)
            first_done = time.perf_counter() - t0
            second = generate_once(page, url)
            second_done = time.perf_counter() - t0
            browser.close()
    finally:
        stop_app(proc)
    return {"backend": backend, "preload": preload, "think_s": think, "page_shown_s": shown,
            "first_generate_s": first, "first_done_s": first_done, "second_generate_s": second,
            "second_done_s": second_done}


def markdown(report: dict) -> str:
    lines = [f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cpus']} CPUs); seconds from "
             f"starting the app, Generate clicked {report['think_s']:g} s after Explore showed.", "",
             "| backend | preload | Explore shown | first Generate: click to done | first done | second Generate | "
             "second done |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in report["cases"]:
        lines.append(f"| {r['backend']} | {'yes' if r['preload'] else 'no'} | {r['page_shown_s']:.1f} | "
                     f"{r['first_generate_s']:.1f} | {r['first_done_s']:.1f} | {r['second_generate_s']:.1f} | "
                     f"{r['second_done_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from core.backends import installed_backends
    from core.backends.hardware import describe

    ap = argparse.ArgumentParser(prog="python -m bench.app_start", description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default=",".join(installed_backends()))
    ap.add_argument("--think", type=float, default=10.0, help="seconds between Explore showing and the click")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    cases = []
    for backend in a.backends.split(","):
        for preload in (False, True):
            cases.append(one_case(backend, preload, a.think))
            print(json.dumps(cases[-1]), file=sys.stderr, flush=True)
    report = {"command": "python -m bench.app_start " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": describe(), "think_s": a.think, "cases": cases}
    text = markdown(report)
    print("\n" + text)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    if a.markdown:
        a.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
