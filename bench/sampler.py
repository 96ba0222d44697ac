"""What ESamp's processor with no distiller does per step beyond vLLM's own sampler, measured op by
op on the same logits, the two alternating many times (so the machine's drift, which moves whole
runs by more than this difference, moves both alike).

    python -m bench.sampler                               # 64 and 384 rows, top-k 50
    python -m bench.sampler --top-p 0.9                   # top-p 0.9 (the app's filter), top-k off
    python -m bench.sampler --json bench/results/sampler.json --markdown bench/results/sampler.md

Both start from vLLM's float32 logits of a bfloat16 model (the embedded model's LM head on states
of the scale its final norm gives, rounded as its bfloat16 logits are, so top-k meets the ties a
real step does). ``vllm-native`` is what vLLM's CPU sampler does to them before its Gumbel draw:
``apply_top_k_only`` (top-k over the vocabulary, then a mask in place), or with ``--top-p``
``apply_top_k_top_p`` (a sort of the whole vocabulary). ``plain`` is what the
processor does for a plain run (``Pipeline.propose``, ``signals``, ``to_sample``: top-k with room
for ties, the float32 recompute of the candidates, the recorded signals, the -inf fill). The
Gumbel draw over the whole vocabulary that follows is the same for both and not timed. Where the
difference is a share of a step, the step is bench.speed's native one on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from core import EsampConfig, RunConfig, SamplingConfig, load_model
from core.backends.hardware import describe
from core.esamp.steerer import Pipeline


def inputs(lm, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (R, V) float32 as vLLM hands them over, h (R, H) float32)."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, lm.head.weight.shape[1], generator=gen)
    h = lm.head.norm(h) if lm.head.norm is not None else h
    return (h.to(lm.head.weight.dtype) @ lm.head.weight.T).float(), h


def measure(lm, rows: int, k: int, repeats: int, top_p: float = 1.0) -> dict:
    """top_p < 1: top-p alone (top-k off), else top-k ``k`` alone."""
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_only, apply_top_k_top_p

    raw, h = inputs(lm, rows)
    k = 0 if top_p < 1.0 else k
    config = RunConfig(method="plain", esamp=EsampConfig(shadow=False), trace="light",
                       sampling=SamplingConfig(n=rows, top_k=k, top_p=top_p, max_new_tokens=8))
    pipeline = Pipeline(config, lm.head, 1)
    positions = torch.ones(rows, dtype=torch.long)  # not a first token
    work = torch.empty_like(raw)
    top_k = torch.full((rows,), k, dtype=torch.long)
    p = torch.full((rows,), top_p)

    def native() -> None:
        if top_p < 1.0:
            apply_top_k_top_p(work, None, p)
        else:
            apply_top_k_only(work, top_k.clone())

    def plain() -> None:
        prop = pipeline.propose(work, h, h, positions)
        pipeline.signals(prop, work).resolve(prop.cand.token_ids(torch.zeros(rows, 1, dtype=torch.long))[:, 0])
        pipeline.to_sample(prop, work)

    seconds: dict[str, list[float]] = {"vllm-native": [], "plain": []}
    with torch.inference_mode():
        for i in range(repeats + 3):
            for name, fn in (("vllm-native", native), ("plain", plain))[::1 if i % 2 else -1]:
                work.copy_(raw)  # each starts from the model's logits, untimed
                t0 = time.perf_counter()
                fn()
                if i >= 3:  # the first rounds warm up
                    seconds[name].append(time.perf_counter() - t0)
        supports = []  # what each leaves to sample from: the same tokens (top-k, its ties kept by both)
        for fn in (native, plain):
            work.copy_(raw)
            fn()
            supports.append(torch.isfinite(work))
    ms = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
    return {"rows": rows, "top_k": k, "top_p": top_p, "repeats": repeats, "ms": ms,
            "extra_ms": ms["plain"] - ms["vllm-native"], "same_candidates": bool(torch.equal(*supports)),
            "same_values": same_values(raw, *supports), "candidates": statistics.median(supports[1].sum(-1).tolist())}


def same_values(raw: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two supports (R, V) bool keep the same logits in every row, whichever of tied tokens each
    kept: top-p's edge may fall inside a tie (a bfloat16 model's logits tie often), and vLLM's sort and
    transformers' rule then keep different ones of the tied tokens."""
    kept = [torch.sort(raw.masked_fill(~s, float("-inf")), dim=-1).values for s in (a, b)]
    return bool(torch.equal(*kept))


def native_steps(path: Path, filt: str = "top-k 50") -> dict[int, float]:
    """ms per native vLLM step by rows, from a bench.speed report (empty where there is none, or where
    it filtered otherwise: a step that sorts the vocabulary is not the one a top-k step is)."""
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    if report.get("filter", "top-k 50") != filt:  # reports before --filter ran top-k 50
        return {}
    return {r["rows"]: 1000 * r["rows"] / r["median_tokens_per_s"]
            for r in report["rows"] if r["variant"] == "vllm-native"}


def markdown(rows: list[dict], steps: dict[int, float]) -> str:
    lines = ["| rows | filter | candidates (median a row) | vLLM's own (ms) | ESamp's processor, plain (ms) | "
             "extra (ms) | extra / native step |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        step = steps.get(r["rows"])
        share = "" if step is None else f"{r['extra_ms'] / step:.1%}"
        filt = f"top-p {r['top_p']:g}" if r.get("top_p", 1.0) < 1.0 else f"top-k {r['top_k']}"
        lines.append(f"| {r['rows']} | {filt} | {r.get('candidates', '')} | {r['ms']['vllm-native']:.1f} | "
                     f"{r['ms']['plain']:.1f} | {r['extra_ms']:.1f} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="64,384")
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=1.0, help="below 1: top-p alone (top-k off)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--steps", type=Path, default=Path("bench/results/speed-native-vllm.json"),
                    help="bench.speed's report whose native step times the shares are of (if it exists)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    lm = load_model()  # the transformers model: its head and dtype are the engine's
    rows = [measure(lm, int(r), a.top_k, a.repeats, a.top_p) for r in a.rows.split(",")]
    steps = native_steps(a.steps, f"top-p {a.top_p:g}" if a.top_p < 1.0 else f"top-k {a.top_k}")
    text = markdown(rows, steps)
    print(text)
    command = "python -m bench.sampler " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": command, "model": lm.name, "dtype": str(lm.dtype),
           "machine": describe(), "rows": rows, "native_step_ms": steps}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    if a.markdown:
        a.markdown.write_text(f"{describe()['cpu']}, {lm.dtype}:\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
