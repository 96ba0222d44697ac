"""A seeded ESamp request sent again and again to one server: does it come back with the same answers?
(A served run's n samples share one distiller; they must start in the same engine step, internals.py
fact 13.)

    python -m bench.repeat                        # starts python -m core serve itself; 20 sends
    python -m bench.repeat --server http://127.0.0.1:8000 --sends 50 --json out.json

Each send is the same completion request (4 samples, 24 tokens, seed 7, T = 1, β = 1 bounded at 5 nats
a token, the push that parts answers soonest), one at a time, through the ``openai`` client. The
report: how many different sets of answers came back, and which send gave which.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from core.backends.hardware import describe

from .client import connect, running_server

PROMPT = "Write a short poem about a lighthouse."
XARGS = {"esamp_beta": 1.0, "esamp_max_kl": 5}


def sends(client, model: str, count: int, n: int = 4, tokens: int = 24, seed: int = 7) -> list[tuple[str, ...]]:
    """The answers of ``count`` identical sends, in order."""
    got = []
    for _ in range(count):
        r = client.completions.create(model=model, prompt=PROMPT, n=n, seed=seed, max_tokens=tokens, temperature=1.0,
                                      extra_body={"vllm_xargs": XARGS})
        got.append(tuple(c.text for c in sorted(r.choices, key=lambda c: c.index)))
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.repeat", description=__doc__.split("\n")[0])
    ap.add_argument("--server", help="a running `python -m core serve` (default: start one on a free port)")
    ap.add_argument("--sends", type=int, default=20)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    with nullcontext(a.server) if a.server else running_server() as url:
        client, model = connect(url)
        got = sends(client, model, a.sends)
    distinct = list(dict.fromkeys(got))
    out = {"command": "python -m bench.repeat " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": describe(), "sends": a.sends, "distinct": len(distinct),
           "which": [distinct.index(g) for g in got], "answers": [list(d) for d in distinct]}
    print(f"{len(distinct)} different sets of answers in {a.sends} sends: {out['which']}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
