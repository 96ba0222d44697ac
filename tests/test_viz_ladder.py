"""The β ladder in viz: which runs form it, bootstrap intervals on hand-made embeddings, the noise
sentence, the spread's hulls, centres and highlight, and where a β sits on diversity vs perplexity."""

import math
from dataclasses import replace

import numpy as np
import pytest

from core.config import RunConfig, SamplingConfig, beta_ladder, temperature_ladder
from core.trace import PromptTrace, RunTrace, Sample, Timings, Token
from viz.charts import sweep_figure
from viz.metrics import bootstrap_difference, bootstrap_interval, vendi_score
from viz.spread import Projection, hull, spread_figure
from viz.style import run_colours
from viz.summary import (colour_order, current_point, diversity, file_label, ladder, learning_sentence,
                         metric_cards, noise_sentence, prompt_scores, tradeoff_points)


def spread_out(n: int, dims: int = 64, seed: int = 0) -> np.ndarray:
    """n answers in unrelated directions: pairwise cosine distance near 1."""
    return np.random.default_rng(seed).normal(size=(n, dims))


def clustered(n: int, dims: int = 64, seed: int = 0, noise: float = 0.2) -> np.ndarray:
    """n answers around one direction: pairwise cosine distance near 0."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=dims) + noise * rng.normal(size=(n, dims))


# ---- bootstrap intervals -------------------------------------------------------------------------

def test_identical_answers_have_zero_diversity_and_a_zero_width_interval():
    emb = np.tile([[1.0, 0.0, 0.0]], (6, 1))
    cos = bootstrap_interval(emb, "cosine_distance")
    assert (cos.value, cos.low, cos.high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    ven = bootstrap_interval(emb, "vendi")
    assert ven.value == pytest.approx(1.0) and ven.low == pytest.approx(1.0) and ven.high == pytest.approx(1.0)


def test_orthogonal_answers_have_distance_one_whatever_is_resampled():
    # every pair of two different answers is at distance 1; pairs of an answer with itself are left out
    cos = bootstrap_interval(np.eye(8), "cosine_distance")
    assert (cos.value, cos.low, cos.high) == pytest.approx((1.0, 1.0, 1.0))


def test_an_interval_holds_its_value_and_narrows_with_more_answers():
    few, many = bootstrap_interval(spread_out(6), "vendi"), bootstrap_interval(spread_out(48), "vendi")
    for iv in (few, many):
        assert iv.low < iv.value < iv.high
    assert (many.high - many.low) / many.value < (few.high - few.low) / few.value
    mixed = np.vstack([clustered(5), spread_out(5, seed=1)])
    cos = bootstrap_interval(mixed, "cosine_distance")
    assert 0.0 <= cos.low < cos.value < cos.high <= 2.0


def test_intervals_are_deterministic_under_the_seed_and_stay_in_range():
    emb = spread_out(5)
    assert bootstrap_interval(emb, "vendi", seed=3) == bootstrap_interval(emb, "vendi", seed=3)
    assert bootstrap_interval(emb, "vendi", seed=3) != bootstrap_interval(emb, "vendi", seed=4)
    assert bootstrap_interval(emb, "vendi").high <= 5.0  # Vendi cannot exceed the number of answers


def test_the_resampled_vendi_is_the_packages_vendi():
    from viz.metrics import _unit_rows, _vendi_of_kernels

    emb = spread_out(7)
    k = _unit_rows(emb) @ _unit_rows(emb).T
    assert _vendi_of_kernels(k[None])[0] == pytest.approx(vendi_score(emb))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_answers_give_no_interval(n):
    iv = bootstrap_interval(spread_out(max(n, 1))[:n], "cosine_distance")
    assert math.isnan(iv.low) and math.isnan(iv.high)
    assert not iv.contains(0.0)


def test_an_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="metric must be one of"):
        bootstrap_interval(spread_out(4), "bleu")


def test_a_real_difference_is_beyond_the_noise_and_none_is_within_it():
    d = bootstrap_difference(clustered(8), spread_out(8, seed=1))
    assert d.value > 0.5 and d.low > 0
    same = bootstrap_difference(spread_out(8, seed=1), spread_out(8, seed=2))
    assert same.contains(0.0)


def test_the_noise_sentence_says_which():
    beyond = noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1))
    assert beyond.startswith("esamp β=1's answers are more diverse than plain's beyond the noise of 8 answers")
    within = noise_sentence("plain", spread_out(8, seed=1), "esamp β=1", spread_out(8, seed=2))
    assert "within the noise of 8 answers" in within and "More samples" in within
    at_most = noise_sentence("plain", spread_out(8, seed=1), "esamp β=1", spread_out(8, seed=2), max_n=8)
    assert "within the noise" in at_most and "More samples" not in at_most and "Another seed" in at_most
    assert "no telling noise from effect" in noise_sentence("plain", spread_out(2), "esamp β=1", spread_out(2))


def test_the_noise_sentence_never_calls_a_run_with_more_broken_answers_more_diverse_and_nothing_else():
    said = noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1), broken=(0, 3))
    assert "more diverse" in said and "but 3 of esamp β=1's 8 answers are broken, looping or gluing non-words " \
        "(plain: 0 of 8)" in said
    assert "broken text, not exploration" in said
    within = noise_sentence("plain", spread_out(8, seed=1), "esamp β=1", spread_out(8, seed=2), broken=(1, 2))
    assert "within the noise" in within and "2 of esamp β=1's 8 answers are broken" in within
    assert "broken" not in noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1), broken=(2, 2))


def test_the_noise_sentence_says_when_shorter_answers_are_part_of_more_diversity():
    said = noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1), lengths=(112.4, 99.9))
    assert "more diverse" in said and "shorter (100 tokens on average against 112)" in said
    assert "part of the difference is length" in said
    broken = noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1), broken=(0, 3),
                            lengths=(112.4, 99.9))
    assert "not exploration." in broken and broken.endswith("part of the difference is length.")
    # not when the lengths are close, nor when b is not more diverse, nor within the noise
    assert "shorter" not in noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1),
                                           lengths=(112.4, 105.0))
    assert "shorter" not in noise_sentence("esamp β=1", spread_out(8, seed=1), "plain", clustered(8),
                                           lengths=(112.4, 50.0))
    assert "shorter" not in noise_sentence("plain", spread_out(8, seed=1), "esamp β=1", spread_out(8, seed=2),
                                           lengths=(112.4, 50.0))
    assert "shorter" not in noise_sentence("plain", clustered(8), "esamp β=1", spread_out(8, seed=1),
                                           lengths=(float("nan"), 50.0))


# ---- which runs form the ladder ------------------------------------------------------------------

def trace_of(config: RunConfig, texts=("a", "b", "c"), novelty=0.5, prompt="p") -> RunTrace:
    samples = [Sample(0, i, text, "eos", [Token(id=1, text=text, logp_ref=-1.0, logp_new=-1.0, entropy_ref=1.0,
                                                entropy_new=1.0, novelty=novelty, rel_novelty=novelty, top=[])])
               for i, text in enumerate(texts)]
    return RunTrace(config=config, model="m", backend="transformers", device="cpu", dtype="float32",
                    prompts=[PromptTrace(prompt, 3, [])], samples=samples, timings=Timings(1.0, len(texts), 3.0))


def two_letter_tokens(trace: RunTrace) -> None:
    """Each answer's tokens made from its text: its words cut in pieces of two characters (a word's first
    piece after a space), each piece's id the sum of its characters' codes."""
    for s in trace.samples:
        pieces = [(" " if i and not k else "") + w[k:k + 2] for i, w in enumerate(s.text.split())
                  for k in range(0, len(w), 2)]
        s.tokens = [replace(s.tokens[0], id=sum(map(ord, p)), text=p) for p in pieces] or s.tokens


BASE = RunConfig(sampling=SamplingConfig(n=3, max_new_tokens=4, seed=1))


def test_a_runs_file_name_keeps_its_beta():
    assert file_label("esamp β=1.5") == "esamp-beta=1.5" and file_label("plain T=0.7") == "plain-T=0.7"


def test_the_ladder_is_plain_at_zero_then_esamp_by_beta():
    traces = [trace_of(c) for c in beta_ladder(BASE, [0.5, 0.0, 0.1])]
    traces += [trace_of(c) for c in temperature_ladder(BASE, [0.7, 1.3])]
    assert [t.method for t in traces[:3]] == ["esamp", "plain", "esamp"]
    assert ladder(traces) == {0.0: 1, 0.1: 2, 0.5: 0}  # the temperatures are not on it


def test_an_old_explore_run_is_a_two_rung_ladder_and_other_methods_stay_off():
    old = [trace_of(RunConfig(sampling=BASE.sampling)), trace_of(RunConfig(method="plain", sampling=BASE.sampling))]
    assert ladder(old) == {0.0: 1, 0.25: 0}
    task = old + [trace_of(RunConfig(method="fire", sampling=BASE.sampling)),
                  trace_of(RunConfig(method="esamp", sampling=BASE.sampling, esamp=BASE.esamp.__class__(noise=True)))]
    assert ladder(task) == {0.0: 1, 0.25: 0}
    assert ladder([trace_of(RunConfig(method="fire"))]) == {}


def test_tradeoff_points_start_esamps_line_at_plain_and_mark_the_current_beta():
    traces = [trace_of(c) for c in beta_ladder(BASE, [0.0, 0.5])] + [trace_of(temperature_ladder(BASE, [1.3])[0])]
    emb = spread_out(9)
    stats = [diversity(t, emb[3 * i:3 * i + 3], [2.0, 3.0, 4.0]) for i, t in enumerate(traces)]
    points = tradeoff_points(traces, stats)
    assert [(p["series"], p["setting"]) for p in points] == [("esamp", "β=0"), ("esamp", "β=0.5"),
                                                             ("plain", "T=1"), ("plain", "T=1.3")]
    assert points[0]["perplexity"] == pytest.approx(3.0)
    assert points[0]["diversity_low"] <= points[0]["diversity"] <= points[0]["diversity_high"]
    fig = sweep_figure(points, current_point(0.5))
    ring = fig.data[0]  # drawn first: the labels stay on top of it
    assert ring.name == "now: β=0.5" and ring.x[0] == pytest.approx(points[1]["perplexity"])
    assert len(sweep_figure(points, current_point(0.9)).data) == 2  # no such point: no ring
    assert fig.layout.xaxis.type is None  # perplexities 3 to 4: a plain axis
    hot = [*points[:-1], {**points[-1], "perplexity": 280.0}]  # a temperature whose text fell apart
    axis = sweep_figure(hot).layout.xaxis
    assert axis.type == "log" and "log" in axis.title.text and list(axis.ticktext) == ["2", "5", "10", "20", "50",
                                                                                      "100", "200"]
    assert not any(p["broken"] for p in points)


@pytest.mark.parametrize("broken", [
    ["la la la la la la la la", "no no no no no no no no", "ok ok ok ok ok ok ok ok"],  # loops
    # glued non-words, no 4-gram twice: each answer's tokens are its words' 2-letter pieces, spaces kept
    ["It is a redefittoredpurplespruceous hue", "Call it ceruleanmistralpinefrostglow then",
     "A shade named azurewhisperingdawnmeadowlight"],
], ids=["loops", "glued"])
def test_a_run_with_more_broken_answers_than_plains_is_crossed_out_where_it_sits(broken):
    configs = beta_ladder(BASE, [0.0, 0.5])
    traces = [trace_of(configs[0]), trace_of(configs[1], texts=broken)]
    for t in traces:
        two_letter_tokens(t)
    emb = spread_out(6)
    stats = [diversity(t, emb[3 * i:3 * i + 3], [2.0, 2.0, 2.0]) for i, t in enumerate(traces)]
    assert (stats[0].broken, stats[1].broken) == (0, 3) and stats[1].breaks_more_than(stats[0])
    assert (stats[0].mean_tokens, stats[0].ended) == (1.0, 3)  # one token each (trace_of), ended at EOS
    assert stats[1].as_row()["mean tokens"] > 1 and stats[1].as_row()["ended by the model"] == 3
    points = tradeoff_points(traces, stats)
    assert [p["broken"] for p in points] == [False, True, False]  # β=0, β=0.5; plain T=1
    crossed = sweep_figure(points).data[-1]
    assert crossed.name == "more broken answers than plain's" and list(crossed.y) == [points[1]["diversity"]]
    cards = {c["label"]: c for c in metric_cards(stats[1], stats[0])}
    assert cards["Broken answers"]["value"] == "3" and cards["Broken answers"]["delta"] == "+3 vs plain"


def test_metric_cards_give_the_change_from_plain():
    emb = np.vstack([clustered(3), spread_out(3, seed=1)])
    plain = diversity(trace_of(BASE), emb[:3], [2.0, 2.0, 2.0])
    esamp = diversity(trace_of(BASE, novelty=0.8), emb[3:], [3.0, 3.0, 3.0])
    cards = {c["label"]: c for c in metric_cards(esamp, plain)}
    assert cards["Perplexity"]["value"] == "3.00" and cards["Perplexity"]["delta"] == "+1.00 vs plain"
    assert cards["Perplexity"]["delta_color"] == "inverse"
    assert cards["Novelty"]["delta"] == "+0.300 vs plain"
    assert cards["Broken answers"]["delta"] == "same as plain"  # 0 and 0: no red "↑ +0"
    assert (cards["Broken answers"]["delta_color"], cards["Broken answers"]["delta_arrow"]) == ("off", "off")
    assert all(c["delta"] is None for c in metric_cards(plain, plain))


# ---- the spread ----------------------------------------------------------------------------------

def test_hull_of_a_square_with_a_point_inside_is_its_four_corners_closed():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], dtype=float)
    outline = hull(square)
    assert len(outline) == 5 and (outline[0] == outline[-1]).all()
    assert {tuple(p) for p in outline} == {(0, 0), (1, 0), (1, 1), (0, 1)}


def test_hull_of_points_on_a_line_is_its_longest_segment_and_of_one_point_nothing():
    line = np.array([[0, 0], [1, 1], [3, 3], [2, 2]], dtype=float)
    assert {tuple(p) for p in hull(line)} == {(0, 0), (3, 3)}
    assert hull(np.array([[1.0, 2.0], [1.0, 2.0]])).shape == (0, 2)


def test_spread_draws_hulls_centres_and_highlights_the_current_run():
    coords = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [6, 5], [5, 6]], dtype=float)
    groups = ["plain"] * 3 + ["esamp β=0.5"] * 3
    keys = [f"{i // 3}:{i % 3}" for i in range(6)]
    fig = spread_figure([f"t{i}" for i in range(6)], groups, Projection(coords, "umap", ""), highlight="plain",
                        keys=keys, colours=run_colours(groups))
    points = [t for t in fig.data if t.customdata is not None]
    assert [t.name for t in points] == ["esamp β=0.5", "plain"]  # the highlighted run drawn last, on top
    faded, current = points
    assert current.marker.opacity == 1.0 and faded.marker.opacity < 1.0 and current.marker.size > faded.marker.size
    assert faded.marker.color == run_colours(groups)["esamp β=0.5"]  # a run keeps its colour when not chosen
    assert [t.unselected.marker.opacity for t in points] == [faded.marker.opacity, 1.0]  # a click dims nothing
    assert list(current.customdata) == ["0:0", "0:1", "0:2"]
    centres = [t for t in fig.data if t.marker.symbol == "x-thin"]
    assert [tuple(c.x) + tuple(c.y) for c in centres] == [(pytest.approx(16 / 3), pytest.approx(16 / 3)),
                                                          (pytest.approx(1 / 3), pytest.approx(1 / 3))]
    outlines = [t for t in fig.data if t.fill == "toself"]
    assert len(outlines) == 2 and all(len(t.x) == 4 for t in outlines)  # triangles, closed


def test_a_ladders_colours_are_shades_of_each_method():
    traces = [trace_of(c) for c in beta_ladder(BASE, [0.0, 0.1, 1.0])]
    traces += [trace_of(c) for c in temperature_ladder(BASE, [1.3, 0.7])]
    order = colour_order(traces)
    assert order == ["esamp β=0.1", "esamp β=1", "plain T=0.7", "plain", "plain T=1.3"]
    colours = run_colours(order)
    assert len(set(colours.values())) == 5
    assert colours["plain"] == "#0072B2"  # the middle of a three-shade ramp is the method's own colour


def test_a_sweeps_esamp_line_starts_at_plain_and_one_prompt_has_no_standard_error():
    from viz.summary import sweep_rows, with_esamp_start

    points = [{"series": "esamp", "setting": "β=0.5", "diversity": 0.7, "diversity_se": 0.0, "perplexity": 9.0,
               "perplexity_se": 0.0},
              {"series": "plain", "setting": "T=1", "diversity": 0.5, "diversity_se": 0.0, "perplexity": 5.0,
               "perplexity_se": 0.0}]
    drawn = with_esamp_start(points)
    assert [(p["series"], p["setting"]) for p in drawn] == [("esamp", "β=0"), ("esamp", "β=0.5"), ("plain", "T=1")]
    assert drawn[0]["diversity"] == 0.5
    assert with_esamp_start(points[1:]) == points[1:]  # no ESamp run: nothing to start
    assert {r["± s.e. over prompts"] for r in sweep_rows(points, prompts=1)} == {"—"}
    assert sweep_rows(points, prompts=3)[0]["± s.e. over prompts"] == "0.000"


def test_a_sweeps_run_with_more_broken_answers_than_plains_is_crossed_out_and_its_share_shown():
    from viz.summary import cross_out_broken, sweep_points, sweep_rows

    configs = beta_ladder(BASE, [0.0, 0.5])
    looping = ["la la la la la la la la", "no no no no no no no no", "it is a fine day"]
    traces = [trace_of(configs[0], texts=["a calm sea", "the hills", "one more day"]), trace_of(configs[1], looping)]
    for t in traces:
        two_letter_tokens(t)
    points = sweep_points(traces, spread_out(6), [[2.0] * 3, [2.0] * 3])
    assert [(p["series"], p["setting"], p["broken"]) for p in points] == [("plain", "T=1", False),
                                                                          ("esamp", "β=0.5", True)]
    assert [r["broken answers"] for r in sweep_rows(points, prompts=1)] == ["0%", "67%"]
    crossed = sweep_figure(points).data[-1]
    assert crossed.name == "more broken answers than plain's" and list(crossed.x) == [points[1]["perplexity"]]
    assert not any(p["broken"] for p in cross_out_broken(points[1:]))  # no plain run at T = 1: nothing to beat
    old = [{k: v for k, v in p.items() if k != "broken_share"} for p in points]  # a report from before the share
    assert not any(p["broken"] for p in cross_out_broken(old)) and sweep_rows(old, 1)[0]["broken answers"] == "—"


def test_pieces_of_a_character_get_distinct_readable_labels_and_the_default_step_is_a_word():
    from core.trace import Token
    from viz.summary import readable_step, token_label

    assert token_label("blue") == "'blue'"
    assert token_label("\ufffd", 9) == "part of a character (token #9)" != token_label("\ufffd", 10)
    assert token_label("") == "part of a character"

    def tok(text):
        return Token(id=1, text=text, logp_ref=-1.0, logp_new=-1.0, entropy_ref=1.0, entropy_new=1.0)

    tokens = [tok(x) for x in ["The", " colour", " is", " ", "", "\ufffd", " 🌵", " bright", "!"]]
    assert readable_step(tokens, 6) == 8  # positions 4-7 are a space and an emoji's pieces, 9 no word
    assert readable_step(tokens, 2) == 2
    from core.trace import Candidate

    tokens[1].top = [Candidate(7, "\ufffd", 0.5, 0.5)]  # a word whose candidates are pieces of characters
    assert readable_step(tokens, 2) == 3


def test_the_learning_sentence_says_what_the_heatmap_shows():
    def sample(values):
        tok = Token(id=1, text="a", logp_ref=-1.0, logp_new=-1.0, entropy_ref=1.0, entropy_new=1.0)
        return Sample(0, 0, "a" * len(values), "length", [replace(tok, rel_novelty=v) for v in values])

    fading = learning_sentence(sample([1.3, 1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6]))
    assert "starts at 1.25" in fading and "no better than predicting nothing" in fading and "fades" in fading
    dark = learning_sentence(sample([1.3] * 8))  # a whole answer at 1.3: the words must not say it fades
    assert "fades" not in dark and "hardly changes" in dark
    assert "already better than predicting nothing" in learning_sentence(sample([0.6] * 8))


def test_the_distance_strip_shows_each_runs_spread_in_the_metrics_order():
    from viz.charts import distance_strip_figure
    from viz.metrics import mean_pairwise_cosine_distance

    runs = {"plain": clustered(8), "esamp β=1": spread_out(8, seed=1), "esamp β=0.5": spread_out(8, seed=3) * 0.5
            + clustered(8) * 2}
    fig = distance_strip_figure(runs)
    drawn = {t.name: float(np.mean(t.x)) for t in fig.data}  # each row's points are its answers' distances
    assert all(len(t.x) == 8 * 7 // 2 and t.boxmean for t in fig.data)
    assert drawn == pytest.approx({k: mean_pairwise_cosine_distance(e) for k, e in runs.items()})
    assert sorted(drawn, key=drawn.get) == sorted(runs, key=lambda k: mean_pairwise_cosine_distance(runs[k]))


def test_prompt_scores_count_loops_glued_non_words_and_either():
    texts = ["la la la la la la la la", "It is a redefittoredpurplespruceous hue", "A deep red"]
    trace = trace_of(BASE, texts=texts)
    two_letter_tokens(trace)
    scores = prompt_scores(trace, spread_out(3), [2.0, 2.0, 2.0])
    assert scores.degenerate == pytest.approx([1 / 3]) and scores.glued == pytest.approx([1 / 3])
    assert scores.broken == pytest.approx([2 / 3])  # either: the loop and the glued one
