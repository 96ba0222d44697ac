"""Semantic spread (real embedder, UMAP and its fallbacks) and the self-contained report."""

import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from core import RunConfig, RunTrace, SamplingConfig, generate
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


def test_spread_figure_colours_by_method_and_escapes_hover():
    texts = ["<script>alert(1)</script>", "b", "c"]
    fig = spread_figure(texts, ["esamp β=0.25", "plain", "plain"], project_2d(np.eye(3)), "t")
    assert [t.name for t in fig.data] == ["esamp β=0.25", "plain"]
    assert "&lt;script&gt;" in fig.data[0].text[0]


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
    assert RunTrace.load(tmp_path / "report.run0-esamp.json") == runs[0]
    assert sorted(p.name for p in images.iterdir()) == [
        "loss.png", "loss.svg", "novelty.png", "novelty.svg", "spread.png", "spread.svg"]
    assert (images / "spread.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pass_at_k_lines_of_one_method_share_its_colour_and_differ_in_dash():
    from viz.charts import pass_at_k_figure

    fig = pass_at_k_figure({"esamp β=0.1": [0.1, 0.2], "esamp β=0.5": [0.1, 0.3], "plain T=1.0": [0.2, 0.3]})
    esamp_a, esamp_b, plain = fig.data
    assert esamp_a.line.color == esamp_b.line.color != plain.line.color
    assert esamp_a.line.dash != esamp_b.line.dash
