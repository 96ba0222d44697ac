"""Semantic spread (real embedder, UMAP and its fallbacks) and the self-contained report."""

import math
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from core import RunConfig, RunTrace, SamplingConfig, generate
from core.scoring import recorded_perplexities
from viz import charts
from viz.spread import embed, project_2d, spread_figure


@pytest.fixture(scope="module")
def embedder():
    from viz.spread import load_embedder

    return load_embedder()


def test_the_real_embedder_puts_similar_sentences_closer(embedder):
    e = embed(["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply today."],
              embedder)
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 200])
def test_projection_shapes_and_determinism(n):
    emb = np.random.default_rng(0).normal(size=(n, 16))
    a, b = project_2d(emb, seed=1), project_2d(emb, seed=1)
    assert a.coords.shape == (n, 2) and np.isfinite(a.coords).all()
    assert np.array_equal(a.coords, b.coords)
    assert a.method == ("umap" if n >= 6 else ("none" if n == 1 else "pca"))
    if a.method != "umap":
        assert a.note  # the figure says why it is not UMAP


def test_identical_answers_do_not_break_the_projection():
    p = project_2d(np.ones((8, 4)), seed=0)
    assert p.coords.shape == (8, 2) and np.isfinite(p.coords).all()


CACHE_COUNTS = """
import sys
import numpy as np
from viz import spread
spread.project_2d(np.random.default_rng(0).normal(size=(8, 16)), seed=1)
jitted = [v for name, m in list(sys.modules.items()) if name.partition(".")[0] in ("umap", "pynndescent")
          for v in vars(m).values() if hasattr(v, "stats") and hasattr(v.stats, "cache_hits")]
print(sum(sum(f.stats.cache_hits.values()) for f in jitted), sum(sum(f.stats.cache_misses.values()) for f in jitted))
"""


def test_a_new_process_loads_umaps_compiled_code_from_numbas_cache():
    """UMAP's numba functions are compiled once on this machine, not in every process (the app's and
    the report's first projection): after this process's projection, a new one loads nearly all of
    it from numba's cache (two one-line random-number helpers are compiled again each time)."""
    project_2d(np.random.default_rng(0).normal(size=(8, 16)), seed=1)  # compiled (or loaded) and cached
    out = subprocess.run([sys.executable, "-c", CACHE_COUNTS], capture_output=True, text=True, check=True)
    hits, misses = map(int, out.stdout.split()[-2:])
    assert hits > 10 * misses, out.stdout  # without the cache: no hits

def test_spread_figure_colours_by_method_and_escapes_hover():
    texts = ["<script>alert(1)</script>", "b", "c"]
    fig = spread_figure(texts, ["esamp β=0.25", "plain", "plain"], project_2d(np.eye(3)), "t")
    answers = [t for t in fig.data if t.text is not None]  # besides each run's hull and centre
    assert [t.name for t in answers] == ["esamp β=0.25", "plain"]
    assert [t.marker.color for t in answers] == ["#D55E00", "#0072B2"]
    assert "&lt;script&gt;" in answers[0].text[0]


class Resources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v:
                self.urls.append(v)


def test_report_is_valid_html_with_no_external_resources(lm, tmp_path):
    cfg = RunConfig(sampling=SamplingConfig(n=3, max_new_tokens=6, seed=0))
    runs = [generate(lm, ["Name an animal."], cfg), generate(lm, ["Name an animal."], RunConfig(
        method="plain", sampling=cfg.sampling))]
    paths = [tmp_path / f"{i}.json" for i in range(2)]
    for t, p in zip(runs, paths):
        t.save(p)
    out = tmp_path / "report.html"
    images = tmp_path / "images"
    r = subprocess.run([sys.executable, "-m", "viz", "report", *map(str, paths), "-o", str(out), "--images",
                        str(images)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    doc = Resources()
    doc.feed(html)
    assert not [u for u in doc.urls if re.match(r"(https?:)?//", u)]
    assert "esamp β=0.25" in html and "Semantic spread" in html and "plotly" in html.lower()
    for t in runs:  # each run's perplexity from its trace's recorded log-probabilities, as the app shows it
        ppl = [p for p in recorded_perplexities(t) if math.isfinite(p)]
        assert f"<td>{round(sum(ppl) / len(ppl), 2)}</td>" in html
    assert RunTrace.load(tmp_path / "report.run0-esamp.json") == runs[0]
    assert sorted(p.name for p in images.iterdir()) == [
        "loss.png", "loss.svg", "novelty.png", "novelty.svg", "spread.png", "spread.svg", "tradeoff.png",
        "tradeoff.svg"]
    assert (images / "spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pass_at_k_lines_of_one_method_share_its_colour_and_differ_in_dash():
    from viz.charts import pass_at_k_figure

    fig = pass_at_k_figure({"esamp β=0.1": [0.1, 0.2], "esamp β=0.5": [0.1, 0.3], "plain T=1.0": [0.2, 0.3]})
    esamp_a, esamp_b, plain = fig.data
    assert esamp_a.line.color == esamp_b.line.color != plain.line.color
    assert esamp_a.line.dash != esamp_b.line.dash


PAYLOAD = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def hostile_trace(method="esamp"):
    from core.trace import PromptTrace, Sample, Timings, Token

    toks = [Token(id=i, text=p, logp_ref=-1.0, logp_new=-1.0, entropy_ref=1.0, entropy_new=1.0, novelty=1.0,
                  rel_novelty=0.5) for i, p in enumerate([PAYLOAD, " and ", PAYLOAD])]
    return RunTrace(config=RunConfig(method=method), model=f"org/{PAYLOAD}", backend="transformers", device="cpu",
                    dtype="float32", prompts=[PromptTrace(f"Say {PAYLOAD}", 3, [1.0, 0.9], [1.0, 0.8])],
                    samples=[Sample(0, i, "".join(t.text for t in toks), "eos", toks) for i in range(3)],
                    timings=Timings(1.0, 9, 9.0), created="2026-11-29T10:00:00+00:00")


def test_the_report_and_its_images_show_hostile_text_as_text(embedder, tmp_path):
    """Prompt, model name, answers (HTML report) and figure labels (SVG export) never become markup."""
    from viz.charts import loss_figure
    from viz.report import build_report, write_images

    html = build_report([hostile_trace(), hostile_trace("plain")], embedder=embedder)
    assert "<img src=x" not in html and "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(2)&lt;/script&gt;") >= 3  # prompt, model, answers: shown as text
    texts = [hostile_trace().samples[0].text, "b", "c"]
    figures = {"spread": spread_figure(texts, [PAYLOAD, "plain", "plain"], project_2d(np.eye(3)), PAYLOAD),
               "loss": loss_figure([hostile_trace()], [PAYLOAD])}
    for path in write_images(figures, tmp_path):
        if path.suffix == ".svg":
            import xml.etree.ElementTree as ET

            root = ET.fromstring(path.read_text(encoding="utf-8"))
            elements = list(root.iter())
            assert not [e.tag for e in elements if e.tag.split("}")[-1] in ("img", "script", "foreignObject", "a")]
            assert not [k for e in elements for k in e.attrib if k.lower().startswith("on")]
            if path.stem == "spread":  # its legend names the group: there, as text
                assert any(PAYLOAD.replace('"', "") in (e.text or "").replace('"', "") for e in elements)


def test_a_ladders_report_shows_what_the_app_shows(lm, embedder):
    """A colour per β, the app's table with 95% intervals and relative novelty, a sentence per β on noise."""
    from html import escape

    from core import beta_ladder
    from viz.report import prepare, render_html

    traces = [generate(lm, ["Name an animal."], c) for c in
              beta_ladder(RunConfig(sampling=SamplingConfig(n=4, max_new_tokens=5, seed=1)), [0, 0.5, 1])]
    report = prepare(traces, embedder=embedder)
    points = [t for t in report.figures["spread"].data if t.customdata is not None or t.mode == "markers"
              and t.marker.symbol is None]
    colours = {t.name: t.marker.color for t in points if t.name}
    assert len({colours["esamp β=0.5"], colours["esamp β=1"], colours["plain"]}) == 3
    assert [r["run"] for r in report.rows] == ["plain", "esamp β=0.5", "esamp β=1"]
    assert all("95% interval" in r and "relative novelty" in r for r in report.rows)
    assert len(report.sentences) == 2 and all("plain" in s for s in report.sentences)
    assert all("broken answers" in r for r in report.rows)
    html = render_html(report)
    assert "95% intervals by bootstrap" in html and all(escape(s) in html for s in report.sentences)
    within = [s for s in report.sentences if "within the noise" in s]
    assert all("More samples (n) would tell" in s for s in within)
    at_most = prepare(traces, embedder=embedder, max_n=4)  # n is already the most a user could ask for
    assert not any("More samples" in s for s in at_most.sentences)


def test_pass_at_k_says_which_curves_lie_on_top_of_each_other():
    fig = charts.pass_at_k_figure({"esamp β=0.25": [0.0, 0.0], "plain": [0.0, 0.0], "fire": [0.0, 0.0],
                                   "min-p 0.1": [0.5, 1.0]})
    notes = [a.text for a in fig.layout.annotations]
    assert notes == ["esamp β=0.25, plain, fire: the same curve, drawn on top of each other"]
    assert fig.layout.xaxis.dtick == 1  # k is whole
