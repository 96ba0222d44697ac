"""Every number the app and the benchmarks show about runs, computed once: labels, per-prompt
scores, the metrics table, sweep points, pass@k tables, speed ratios and a fusion step's
candidates. Perplexities are computed by core.scoring and passed in: viz never loads a
language model."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import numpy as np

from core.config import RunConfig
from core.esamp.words import starts_word
from core.tasks import is_correct
from core.trace import RunTrace, Token

from . import metrics


def run_label(trace: RunTrace) -> str:
    return config_label(trace.config)


def config_label(config: RunConfig) -> str:
    """A short name for a run's settings: 'esamp β=0.25', 'esamp-noise β=0.25', 'plain', 'plain T=0.7',
    'min-p 0.1', 'fire'."""
    series, setting = config_series(config)
    s = config.sampling
    if series.startswith("esamp"):
        label = f"{series} {setting}"
    elif series == "min-p":
        label = f"min-p {s.min_p:g}"
    else:
        label = config.method
    if s.temperature != 1.0:
        label += f" T={s.temperature:g}"
    return label


def file_label(label: str) -> str:
    """A run label as part of a file name: 'esamp β=1.5' -> 'esamp-beta=1.5' (characters every OS and
    shell keep as they are)."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", label.replace("β", "beta")).strip("-")


def config_series(config: RunConfig) -> tuple[str, str]:
    """The line a run belongs to in a sweep, and its point's name: ('esamp', 'β=0.25'),
    ('esamp-noise', 'β=0.25'), ('plain', 'T=0.7'), ('min-p', 'min-p 0.1'), ('fire', 'fire')."""
    s = config.sampling
    if config.method == "esamp":
        return "esamp-noise" if config.esamp.noise else "esamp", f"β={config.esamp.beta:g}"
    if config.method == "plain" and s.min_p > 0:
        return "min-p", f"min-p {s.min_p:g}"
    if config.method == "plain":
        return "plain", f"T={s.temperature:g}"
    return config.method, config.method


@dataclass
class PromptScores:
    """One value per prompt of a run, for each metric."""

    cosine_distance: list[float]  # mean pairwise cosine distance of the prompt's answers
    vendi: list[float]
    distinct_2: list[float]
    self_bleu: list[float]
    perplexity: list[float]  # mean over the prompt's answers (NaN when unknown)
    # Broken text, on tokens: the mean seq-rep-4 of the prompt's answers (the share of an answer's
    # token 4-grams that repeat an earlier one of its own); the share of its answers that loop (over
    # metrics.DEGENERATE_SEQ_REP_4), that glue a non-word (metrics.GLUED_TOKENS tokens or more), and that
    # do either ("broken"). Empty in reports written before they were measured (glued and broken since
    # 2026-12-05: an earlier report's "degenerate" counted loops only, as it still does).
    seq_rep_4: list[float] = field(default_factory=list)
    degenerate: list[float] = field(default_factory=list)
    glued: list[float] = field(default_factory=list)
    broken: list[float] = field(default_factory=list)

    def mean_se(self, metric: str) -> tuple[float, float]:
        """Mean over prompts and its standard error (prompts with a NaN left out)."""
        return metrics.mean_and_stderr(getattr(self, metric))

    def summary(self) -> dict[str, dict[str, float]]:
        return {f.name: dict(zip(("mean", "se"), self.mean_se(f.name))) for f in fields(self)}


def prompt_scores(trace: RunTrace, emb: np.ndarray, perplexities: Sequence[float] | None = None) -> PromptScores:
    """Per-prompt metrics of a run; ``emb`` and ``perplexities`` hold one entry per sample, in
    ``trace.samples`` order."""
    out = PromptScores([], [], [], [], [])
    for p in range(len(trace.prompts)):
        idx = [i for i, s in enumerate(trace.samples) if s.prompt_index == p]
        texts, e = [trace.samples[i].text for i in idx], emb[idx]
        out.cosine_distance.append(metrics.mean_pairwise_cosine_distance(e))
        out.vendi.append(metrics.vendi_score(e))
        out.distinct_2.append(metrics.distinct_n(texts, 2))
        out.self_bleu.append(metrics.self_bleu(texts))
        ppl = [perplexities[i] for i in idx if perplexities and _finite(perplexities[i])]
        out.perplexity.append(float(np.mean(ppl)) if ppl else math.nan)
        ids, pieces = _tokens(trace, idx)
        rep = [metrics.seq_rep(a, 4) for a in ids]
        loops = [r > metrics.DEGENERATE_SEQ_REP_4 for r in rep]  # metrics.is_degenerate, its two parts apart
        glued = [metrics.glued_run(p) >= metrics.GLUED_TOKENS for p in pieces]
        for values, share in ((rep, out.seq_rep_4), (loops, out.degenerate), (glued, out.glued),
                              ([a or b for a, b in zip(loops, glued)], out.broken)):
            share.append(float(np.mean(values)) if ids else math.nan)
    return out


def _tokens(trace: RunTrace, idx: Sequence[int]) -> tuple[list[list[int]], list[list[str]]]:
    """The token ids and the tokens' text pieces of the samples ``idx`` of a run."""
    return ([[t.id for t in trace.samples[i].tokens] for i in idx],
            [[t.text for t in trace.samples[i].tokens] for i in idx])


@dataclass
class RunSummary:
    label: str
    samples: int
    tokens_per_s: float
    mean_novelty: float | None
    cosine_distance: float  # mean over prompts of the mean pairwise cosine distance
    vendi: float  # mean over prompts
    distinct_2: float
    self_bleu: float
    perplexity: float | None  # mean over answers, when given

    def as_row(self) -> dict:
        return asdict(self)


def summarize(trace: RunTrace, emb: np.ndarray, perplexities: Sequence[float] | None = None) -> RunSummary:
    """Metrics of one run; ``emb`` holds one embedding per sample, in ``trace.samples`` order."""
    scores = prompt_scores(trace, emb, perplexities)
    ppl = [p for p in (perplexities or []) if _finite(p)]
    return RunSummary(
        label=run_label(trace), samples=len(trace.samples), tokens_per_s=trace.timings.tokens_per_s,
        mean_novelty=trace.mean_novelty(),
        cosine_distance=float(np.mean(scores.cosine_distance)), vendi=float(np.mean(scores.vendi)),
        distinct_2=float(np.mean(scores.distinct_2)), self_bleu=float(np.mean(scores.self_bleu)),
        perplexity=float(np.mean(ppl)) if ppl else None,
    )


def split_by_run(traces: Sequence[RunTrace], emb: np.ndarray) -> list[np.ndarray]:
    """The embeddings of all runs' samples, run after run, cut into one array per run."""
    bounds = np.cumsum([0] + [len(t.samples) for t in traces])
    return [emb[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def summarize_runs(traces: Sequence[RunTrace], emb: np.ndarray,
                   perplexities: Sequence[Sequence[float]] | None = None) -> list[RunSummary]:
    """One summary per run; ``emb`` holds the embeddings of all runs' samples, run after run."""
    return [summarize(t, e, perplexities[i] if perplexities else None)
            for i, (t, e) in enumerate(zip(traces, split_by_run(traces, emb)))]


def quarter_means(values: Sequence[float]) -> list[float]:
    """The mean of each quarter of a sequence, first to last (a quarter's extra element goes last)."""
    n = len(values)
    cuts = [round(n * i / 4) for i in range(5)]
    return [float(np.mean(values[a:b])) if b > a else math.nan for a, b in zip(cuts[:-1], cuts[1:])]


def novelty_columns(trace: RunTrace, relative: bool = True, prompt_index: int | None = None) -> list[list[float]]:
    """The samples' (relative) novelty at each answer position, of one prompt or all; positions
    no sample reached with a distiller are left out."""
    rows = [[t.rel_novelty if relative else t.novelty for t in s.tokens] for s in trace.samples
            if prompt_index is None or s.prompt_index == prompt_index]
    width = max((len(r) for r in rows), default=0)
    cols = [[r[i] for r in rows if i < len(r) and r[i] is not None] for i in range(width)]
    return [c for c in cols if c]


def learning_sentence(sample) -> str:
    """What an answer's relative novelty did along it, in words that match its heatmap: where it
    started and ended (means of its first and last quarters), against 1 = no better than nothing."""
    values = [t.rel_novelty for t in sample.tokens if t.rel_novelty is not None]
    if not values:
        return "No distiller ran for this answer, so there is no novelty to show."
    first, *_, last = quarter_means(values) if len(values) >= 4 else (values[0], values[-1])
    where = ("already better than predicting nothing" if first < 1 else "no better than predicting nothing")
    if last < first - 0.05:
        trend = f"and it learns: by the last quarter it is at {last:.2f}, so the colour fades"
    elif last > first + 0.05:
        trend = f"and it rises to {last:.2f} by the last quarter: the answer went somewhere its distiller had not seen"
    else:
        trend = f"and it stays about there ({last:.2f} in the last quarter), so the colour hardly changes"
    return f"Along this answer relative novelty starts at {first:.2f} in its first quarter, {where}, {trend}."


def trace_quarters(trace: RunTrace, prompt_index: int | None = None) -> list[float]:
    """Mean relative novelty ``||h - h_hat|| / ||h||`` by quarter of the answer positions: how the
    distiller's prediction improves along an answer (1 = no better than predicting zero)."""
    return quarter_means([float(np.mean(c)) for c in novelty_columns(trace, True, prompt_index)])


def sweep_point(config: RunConfig, scores: PromptScores) -> dict:
    """A run as one point of diversity against perplexity (means over prompts, with standard errors)."""
    series, setting = config_series(config)
    (div, div_se), (ppl, ppl_se) = scores.mean_se("cosine_distance"), scores.mean_se("perplexity")
    return {"series": series, "setting": setting, "diversity": div, "diversity_se": div_se,
            "perplexity": ppl, "perplexity_se": ppl_se, "broken_share": scores.mean_se("broken")[0]}


def sweep_points(traces: Sequence[RunTrace], emb: np.ndarray,
                 perplexities: Sequence[Sequence[float]]) -> list[dict]:
    """``sweep_point`` of each run; ``emb`` holds all runs' samples, run after run."""
    return cross_out_broken([sweep_point(t.config, prompt_scores(t, e, p))
                             for t, e, p in zip(traces, split_by_run(traces, emb), perplexities)])


def cross_out_broken(points: Sequence[dict]) -> list[dict]:
    """Sweep points, each marked ``broken`` where more of its answers are broken text than plain sampling's
    at T = 1 (``sweep_figure`` crosses them out, as Explore's chart does a rung's); none without that run,
    nor where the shares are unknown (reports written before broken text was measured)."""
    base = next((p for p in points if (p["series"], p["setting"]) == ("plain", "T=1")), None)
    share = base.get("broken_share", math.nan) if base else math.nan
    return [{**p, "broken": p is not base and _finite(share) and p.get("broken_share", math.nan) > share}
            for p in points]


def with_esamp_start(points: Sequence[dict]) -> list[dict]:
    """Sweep points with plain sampling at T = 1 also as ESamp's β = 0, so ESamp's line starts at plain."""
    start = next((p for p in points if p["series"] == "plain" and p["setting"] == "T=1"), None)
    if start is None or not any(p["series"] == "esamp" for p in points):
        return list(points)
    esamp = [p for p in points if p["series"] == "esamp"]
    return [{**start, "series": "esamp", "setting": "β=0"}, *esamp, *(p for p in points if p["series"] != "esamp")]


def sweep_rows(points: Sequence[dict], prompts: int) -> list[dict]:
    """A sweep's table with readable columns; no standard error over one prompt ("—")."""
    def se(x: float) -> str:
        return "—" if prompts < 2 or not _finite(x) else f"{x:.3f}"

    def share(x: float | None) -> str:
        return "—" if x is None or not _finite(x) else f"{x:.0%}"

    return [{"run": f"{p['series']} {p['setting']}", "diversity (mean cosine distance)": round(p["diversity"], 3),
             "± s.e. over prompts": se(p["diversity_se"]), "perplexity": round(p["perplexity"], 2),
             "± s.e. over prompts ": se(p["perplexity_se"]), "broken answers": share(p.get("broken_share"))}
            for p in points]


def pass_at_k_table(traces: Sequence[RunTrace], answers: Sequence[str]) -> tuple[dict[str, list[float]], list[dict]]:
    """pass@k curves (k = 1..n) by run label, and a row per run; answers[p] is prompt p's answer."""
    curves, rows = {}, []
    for t in traces:
        n = t.config.sampling.n
        correct = [sum(is_correct(s.text, answers[p]) for s in t.samples_of(p)) for p in range(len(t.prompts))]
        label = run_label(t)
        curves[label] = metrics.pass_at_k_curve(correct, n)
        rows.append({"method": label, "pass@1": curves[label][0], f"pass@{n}": curves[label][-1],
                     "tasks solved at least once": sum(c > 0 for c in correct)})
    return curves, rows


def passk_noise(problems: int) -> str:
    """How much of a pass@k curve is noise with this many problems: one problem more or less solved moves
    it by 1 / problems, so smaller differences between methods are chance."""
    step = 1 / max(problems, 1)
    said = (f"Over {problems} problem{'s' if problems != 1 else ''}, one problem solved or not moves a curve "
            f"by {step:.2f}")
    if problems < 20:
        return said + (": differences of that size between methods are chance; 20 or more problems, and several "
                       "seeds, tell more.")
    return said + "; a difference of a few such steps can still be chance (another seed tells)."


def answer_rows(traces: Sequence[RunTrace], answers: Sequence[str]) -> list[dict]:
    """Every sample of every run with its task's expected answer and whether it got it."""
    return [{"method": run_label(t), "task": s.prompt_index, "expected": answers[s.prompt_index], "answer": s.text,
             "correct": is_correct(s.text, answers[s.prompt_index])} for t in traces for s in t.samples]


def speed_ratio(traces: Sequence[RunTrace]) -> float | None:
    """ESamp's tokens/s over plain sampling's, when both are among the runs."""
    by = {t.method: t.timings.tokens_per_s for t in traces}
    if by.get("esamp") and by.get("plain"):
        return by["esamp"] / by["plain"]
    return None


def fusion_step(token: Token, max_kl: float | None = None) -> dict[str, str]:
    """What one fusion step did to a token, as labelled values: its novelty, its probability before
    and after, and how far the whole distribution moved (KL, nats), against the bound ``max_kl``."""
    novelty = "–" if token.novelty is None else f"{token.novelty:.2f}"
    moved = "–" if token.kl is None else f"{token.kl:.2f}"
    if token.kl is not None and max_kl is not None:
        moved += f" of at most {max_kl:g}" + (" (the bound held it back)" if token.kl >= 0.98 * max_kl > 0 else "")
    return {"novelty ‖e‖": novelty,
            "p(chosen) before → after": f"{math.exp(token.logp_ref):.2f} → {math.exp(token.logp_new):.2f}",
            "push: KL(after ‖ before), nats": moved}


def left_to_the_model(token: Token, config: RunConfig) -> bool:
    """Whether a run that pushes between words left this token's own probability to the model: a piece
    that continues a word or a character (``core.esamp.words``)."""
    return config.esamp.between_words and config.beta > 0 and not starts_word(token.text)


def token_label(text: str, token_id: int | None = None) -> str:
    """A token as a reader can tell it from the others: quoted, with a part of a multi-byte
    character (an emoji is several tokens; alone each decodes to '\ufffd' or nothing) named by its id."""
    if text and "\ufffd" not in text:
        return repr(text)
    return "part of a character" + ("" if token_id is None else f" (token #{token_id})")


def readable_step(tokens: Sequence[Token], wanted: int) -> int:
    """The 1-based position nearest ``wanted`` (later first) whose token is a word piece (a letter or
    digit in it) and whose candidates are too: not a space, nor a piece of an emoji, whose candidates
    are other pieces of characters."""
    def word(text: str) -> bool:
        return "\ufffd" not in text and any(ch.isalnum() for ch in text)

    ok = [i + 1 for i, t in enumerate(tokens) if word(t.text) and all(word(c.text) for c in t.top)]
    if not ok:
        return min(wanted, len(tokens))
    return min(ok, key=lambda p: (abs(p - wanted), p < wanted))


def token_rows(sample) -> list[dict]:
    """An answer's tokens as a table: what the heatmap's hover tooltips say, for every token at once
    (and on touch screens, which have no hover)."""
    def r(x, digits=3):
        return None if x is None or not math.isfinite(x) else round(x, digits)

    return [{"#": i + 1, "token": token_label(t.text, t.id), "p before": r(math.exp(t.logp_ref)),
             "p after": r(math.exp(t.logp_new)), "ESamp's change (log p)": r(t.logp_new - t.logp_ref),
             "relative novelty": r(t.rel_novelty), "entropy": r(t.entropy_ref, 2)} for i, t in enumerate(sample.tokens)]


def candidate_rows(token: Token) -> list[dict]:
    """A token's top candidates before and after fusion, with the log ratio fusion applied to each
    (``β w·e / T`` after renormalising; None where a probability is 0)."""
    return [{"candidate": token_label(c.text, c.id), "p before": c.p_ref, "p after": c.p_new,
             "log ratio (β w·e / T, renormalised)": math.log(c.p_new / c.p_ref) if c.p_ref > 0 and c.p_new > 0
             else None} for c in token.top]


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def ladder(traces: Sequence[RunTrace]) -> dict[float, int]:
    """The runs that differ only in β, as β -> index into ``traces``, β ascending: ESamp's runs on
    the first ESamp run's sampling settings, and plain sampling on them as β = 0 (its distiller in
    shadow). Other runs (other temperatures, min-p, FIRE, the noise ablation) are not on it."""
    esamp = [i for i, t in enumerate(traces) if t.method == "esamp" and not t.config.esamp.noise]
    ref = traces[esamp[0]].config.sampling if esamp else None
    rungs: dict[float, int] = {}
    for i, t in enumerate(traces):
        same = ref is None or t.config.sampling == ref
        if same and (i in esamp or (t.method == "plain" and (ref is not None or t.config.sampling.temperature == 1))):
            rungs.setdefault(t.config.beta, i)
    return dict(sorted(rungs.items()))


@dataclass
class Diversity:
    """A run's answers to one prompt: diversity with bootstrap intervals, coherence, broken text, novelty."""

    label: str
    answers: int
    cosine_distance: metrics.Interval
    vendi: metrics.Interval
    perplexity: float  # mean over the answers (NaN when unknown)
    mean_novelty: float | None  # mean relative novelty of the answers' tokens
    seq_rep_4: float = 0.0  # mean over the answers of their own token seq-rep-4 (metrics.seq_rep)
    broken: int = 0  # answers that loop or glue a non-word (metrics.is_degenerate): broken text
    mean_tokens: float = math.nan  # the answers' mean length in tokens
    ended: int = 0  # answers the model ended (EOS) before the token limit

    def as_row(self, current: bool = False) -> dict:
        cos, ven = self.cosine_distance, self.vendi
        # How far apart, then whether the text held, first: a projector's 1024 px shows about eight columns.
        return {"": "▶" if current else "", "run": self.label, "answers": self.answers,
                "cosine distance": round(cos.value, 3), "95% interval": _bounds(cos),
                "perplexity": None if not _finite(self.perplexity) else round(self.perplexity, 2),
                "broken answers": self.broken,
                "Vendi": round(ven.value, 2), "Vendi 95% interval": _bounds(ven, 2),
                "repeated 4-grams": round(self.seq_rep_4, 3),
                "relative novelty": None if self.mean_novelty is None else round(self.mean_novelty, 3),
                "mean tokens": None if not _finite(self.mean_tokens) else round(self.mean_tokens, 1),
                "ended by the model": self.ended}

    def breaks_more_than(self, base: "Diversity | None") -> bool:
        """Whether more of these answers are broken than of ``base``'s (plain sampling's)."""
        return base is not None and base is not self and self.broken > base.broken


def diversity(trace: RunTrace, emb: np.ndarray, perplexities: Sequence[float] | None, prompt_index: int = 0,
              seed: int = 0) -> Diversity:
    """``Diversity`` of one prompt's answers; ``emb`` and ``perplexities`` hold one entry per sample
    of the run, in ``trace.samples`` order."""
    idx = [i for i, s in enumerate(trace.samples) if s.prompt_index == prompt_index]
    e = emb[idx]
    ppl = [perplexities[i] for i in idx if perplexities and _finite(perplexities[i])]
    rel = [t.rel_novelty for i in idx for t in trace.samples[i].tokens if t.rel_novelty is not None]
    ids, pieces = _tokens(trace, idx)
    lengths = [len(trace.samples[i].tokens) for i in idx]
    return Diversity(run_label(trace), len(idx), metrics.bootstrap_interval(e, "cosine_distance", seed=seed),
                     metrics.bootstrap_interval(e, "vendi", seed=seed), float(np.mean(ppl)) if ppl else math.nan,
                     float(np.mean(rel)) if rel else None,
                     float(np.mean([metrics.seq_rep(a, 4) for a in ids])) if ids else 0.0,
                     sum(metrics.is_degenerate(a, p) for a, p in zip(ids, pieces)),
                     float(np.mean(lengths)) if lengths else math.nan,
                     sum(trace.samples[i].finish_reason == "eos" for i in idx))


SHORTER = 0.9  # b's answers at most this share of a's mean length are "shorter" (see noise_sentence)


def noise_sentence(label_a: str, emb_a: np.ndarray, label_b: str, emb_b: np.ndarray, seed: int = 0,
                   max_n: int | None = None, broken: tuple[int, int] = (0, 0),
                   lengths: tuple[float, float] | None = None) -> str:
    """One plain sentence on whether b's answers are more or less diverse (mean pairwise cosine
    distance) than a's beyond the noise of this many answers (a bootstrap interval of the difference).
    ``max_n``: the most answers the user can ask for (no advice to ask for more past it); ``broken``:
    how many of a's and of b's answers are broken (``Diversity.broken``): where b has more,
    the sentence says so, and never calls b more diverse without it. ``lengths``: a's and b's mean
    answer lengths (``Diversity.mean_tokens``): where b is more diverse and its answers are shorter
    (``SHORTER``), the sentence says that part of the difference is length. ESamp's answers end sooner
    at 128 tokens and more, and plain sampling's own answers cut to ESamp's lengths were measured a
    quarter of ESamp's gain more diverse (docs/results.md, "Ending sooner")."""
    n_a, n_b = len(emb_a), len(emb_b)
    if min(n_a, n_b) < metrics.MIN_BOOTSTRAP_ANSWERS:
        return (f"With {min(n_a, n_b)} answer(s) per setting there is no telling noise from effect: "
                f"use n ≥ {metrics.MIN_BOOTSTRAP_ANSWERS}, better 8 or more.")
    d = metrics.bootstrap_difference(emb_a, emb_b, "cosine_distance", seed=seed)
    answers = f"{n_a} answers" if n_a == n_b else f"{n_a} and {n_b} answers"
    interval = f"{d.value:+.3f}, 95% interval {d.low:+.3f} to {d.high:+.3f}"
    if broken[1] > broken[0]:
        broken = (f"{broken[1]} of {label_b}'s {n_b} answers are broken, looping or gluing non-words ({label_a}: "
                  f"{broken[0]} of {n_a})")
    else:
        broken = ""
    if d.contains(0.0):
        advice = ("More samples (n) would tell." if max_n is None or min(n_a, n_b) < max_n else
                  "Another seed, or a prompt with more room for different answers, would tell more.")
        said = (f"{label_b} vs {label_a}: the difference in diversity ({interval}) is within the noise of "
                f"{answers}: it could be chance. {advice}")
        return said + (f" And {broken}." if broken else "")
    more = "more" if d.value > 0 else "less"
    said = f"{label_b}'s answers are {more} diverse than {label_a}'s beyond the noise of {answers} ({interval})"
    if broken and more == "more":
        said = f"{said}, but {broken}: part of that diversity is broken text, not exploration."
    else:
        said += f"; and {broken}." if broken else "."
    if more == "more" and lengths is not None and all(map(_finite, lengths)) and lengths[1] <= SHORTER * lengths[0]:
        said += (f" Its answers are also shorter ({lengths[1]:.0f} tokens on average against {lengths[0]:.0f}), and "
                 "shorter answers differ more by themselves: part of the difference is length.")
    return said


def _bounds(interval: metrics.Interval, digits: int = 3) -> str:
    if not (_finite(interval.low) and _finite(interval.high)):
        return "–"
    return f"{interval.low:.{digits}f} – {interval.high:.{digits}f}"


def tradeoff_points(traces: Sequence[RunTrace], diversities: Sequence[Diversity]) -> list[dict]:
    """Diversity against perplexity for one prompt, one point per run (ladder rungs and plain
    temperatures), with the bootstrap interval of its diversity; plain sampling at the ladder's
    β = 0 starts ESamp's line as well as lying on temperature's. A run with more broken answers than
    plain sampling's at the ladder's β = 0 is marked ``broken`` (its place on the chart is not a better
    trade-off: looping text is diverse between answers and likely within them)."""
    rungs = ladder(traces)
    base = diversities[rungs[0.0]] if 0.0 in rungs else None
    points = []
    for i, (t, d) in enumerate(zip(traces, diversities)):
        if t.method not in ("esamp", "plain") or t.config.esamp.noise or t.config.sampling.min_p > 0:
            continue
        series, setting = config_series(t.config)
        point = {"series": series, "setting": setting, "diversity": d.cosine_distance.value,
                 "diversity_low": d.cosine_distance.low, "diversity_high": d.cosine_distance.high,
                 "perplexity": d.perplexity, "broken": d.breaks_more_than(base)}
        if rungs.get(0.0) == i and len(rungs) > 1:
            points.append({**point, "series": "esamp", "setting": "β=0"})
        points.append(point)
    order = {"esamp": 0, "plain": 1}
    return sorted(points, key=lambda p: (order[p["series"]], float(p["setting"].split("=")[1])))


def current_point(beta: float) -> tuple[str, str]:
    """The point of ``tradeoff_points`` that stands for the ladder's rung at ``beta``."""
    return "esamp", f"β={beta:g}"


def metric_cards(current: Diversity, base: Diversity | None) -> list[dict]:
    """The current run's headline numbers for metric cards, each with its change from ``base``
    (plain sampling) when given: label, value, delta, whether a rise is good ("normal") or bad, and its
    arrow ("off" where the shown values are the same: no arrow, grey, rather than a red "↑ +0")."""
    def card(label, value, base_value, fmt, colour="normal", help=""):
        delta, arrow = None, "auto"
        if base is not None and base is not current and _finite(value) and _finite(base_value):
            delta = f"{value - base_value:+{fmt}} vs plain"
            if f"{value:{fmt}}" == f"{base_value:{fmt}}":
                delta, colour, arrow = "same as plain", "off", "off"
        return {"label": label, "value": "–" if not _finite(value) else f"{value:{fmt}}", "delta": delta,
                "delta_color": colour, "delta_arrow": arrow, "help": help}

    b = base or current
    # Short labels: four cards share a row, at 1024 px too; the table below names each metric in full
    # (Vendi with them).
    return [card("Diversity", current.cosine_distance.value, b.cosine_distance.value, ".3f",
                 help="mean cosine distance between the answers' sentence embeddings: 0 = all say the same"),
            card("Perplexity", current.perplexity, b.perplexity, ".2f", "inverse",
                 help="how surprised the model itself is by the answers, the mean of each answer's (lower = more "
                      "fluent; one broken answer can raise it a lot; text that loops is likely text, so a low "
                      "perplexity alone does not mean good text)"),
            card("Broken answers", current.broken, b.broken, "d", "inverse",
                 help=f"answers that loop (more than {metrics.DEGENERATE_SEQ_REP_4:.0%} of their token 4-grams repeat "
                      "an earlier one of their own: \"sapphire sapphire sapphire\", \",,,,,,\") or glue letters into "
                      f"a non-word of {metrics.GLUED_TOKENS} tokens or more (\"spacespacespacename\", \"✨✨✨✨\"): "
                      "broken text, whatever the diversity says"),
            card("Novelty", current.mean_novelty, b.mean_novelty, ".3f",
                 help="mean relative novelty ‖e‖/‖h‖ of the answers' tokens: 1 = the distiller no better than "
                      "predicting nothing")]


def colour_order(traces: Sequence[RunTrace]) -> list[str]:
    """The runs' labels ordered so that each method's shades run with β, then temperature."""
    ordered = sorted(traces, key=lambda t: (t.method, t.config.beta, t.config.sampling.temperature))
    return [run_label(t) for t in ordered]
