"""Heatmap HTML: escaping of hostile model output, faithful whitespace, merged byte pieces."""

from html.parser import HTMLParser

import pytest

from core.config import RunConfig
from core.trace import Candidate, PromptTrace, RunTrace, Sample, Timings, Token
from viz.heatmap import SIGNALS, heatmap_html, merged_tokens, signal_range

HOSTILE = ["<script>alert(1)</script>", '" onmouseover="alert(2)', "</div>", "&amp;", "$x$", "`rm -rf`",
           "\n", "'><img src=x onerror=alert(3)>", "  ", "東京", "🙂"]


def make_trace(pieces, prompt="<script>alert('prompt')</script>"):
    tokens = [Token(id=i, text=p, logp_ref=-1.0 - i * 0.1, logp_new=-0.9, entropy_ref=1.0, entropy_new=1.1,
                    novelty=float(i), rel_novelty=i / 10,
                    top=[Candidate(7, p, 0.4, 0.5), Candidate(8, "<b>x</b>", 0.2, 0.1)])
              for i, p in enumerate(pieces)]
    sample = Sample(0, 0, "".join(pieces), "eos", tokens)
    return RunTrace(config=RunConfig(), model="m<odel>", backend="transformers", device="cpu", dtype="float32",
                    prompts=[PromptTrace(prompt, 3, [1.0, 0.5])], samples=[sample],
                    timings=Timings(1.0, len(pieces), float(len(pieces))), created="now")


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.parametrize("signal", list(SIGNALS))
def test_hostile_tokens_render_as_inert_visible_text(signal):
    html = heatmap_html(make_trace(HOSTILE), signal)
    doc = Collector()
    doc.feed(html)
    assert "script" not in doc.tags and "img" not in doc.tags and "b" not in doc.tags
    assert {k for _, k, _ in doc.attrs} <= {"class", "style", "title"}  # no injected handlers
    visible = "".join(doc.text)
    for piece in ["<script>alert(1)</script>", '" onmouseover="alert(2)', "</div>", "&amp;", "$x$", "`rm -rf`"]:
        assert piece in visible  # shown as text, exactly
    titles = " ".join(v for _, k, v in doc.attrs if k == "title")
    assert "<b>x</b>" in titles  # candidate text is in the tooltip, as text


def test_newlines_are_marked_and_kept():
    html = heatmap_html(make_trace(["a", "\n", "b"]))
    assert '↵</span>\n' in html


def test_empty_byte_pieces_merge_into_the_token_that_completes_the_character():
    trace = make_trace(["x", "", "", "🙂", "y"])
    merged = merged_tokens(trace.samples[0])
    assert [(text, n) for text, _, n in merged] == [("x", 0), ("🙂", 2), ("y", 0)]
    assert "(+2 byte tokens)" in heatmap_html(trace)


def test_diverging_signal_range_is_symmetric():
    trace = make_trace(["a", "b", "c"])
    lo, hi = signal_range([trace], "logp_gain")
    assert lo == -hi


def test_real_tokenizer_pieces_with_emoji_and_cjk_render_without_mojibake(lm):
    from core.backends.record import token_pieces

    text = "Tokyo 東京 🙂🚀 ok"
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(lm.tokenizer, ids)
    html = heatmap_html(make_trace(pieces))
    doc = Collector()
    doc.feed(html)
    assert text in "".join(doc.text) and "\ufffd" not in html


def test_relative_novelty_has_one_readable_scale_in_every_run():
    """0 to 1.5 whatever the values, so 1 ("no better than predicting nothing") is always the same colour."""
    low, high = make_trace(["a", "b"]), make_trace(["a"] * 30)  # rel_novelty up to 0.1 and up to 2.9
    assert signal_range([low], "rel_novelty") == signal_range([high], "rel_novelty") == (0.0, 1.5)
    assert "no better than predicting nothing" in heatmap_html(low)  # the default signal's legend
    assert signal_range([high], "novelty") != signal_range([low], "novelty")  # other signals follow the data


def test_the_live_view_marks_where_an_answer_left_the_references_and_escapes_it():
    from viz.heatmap import LIVE_MARK, live_html

    plain = (("The", " sea", " is"), ("A", " <b>",))
    esamp = (("The", " sky", " <script>"), ("A", " <b>", " x"))
    html = live_html([("plain", plain), ("esamp β=1", esamp)], per_prompt=2)
    assert html.count(LIVE_MARK) == 2  # answer 1 from ' sky' on; answer 2 from its third token (plain ended)
    assert f'<span style="background:{LIVE_MARK}"> sky &lt;script&gt;</span>' in html
    assert "<script>" not in html and "<b>" not in html
    assert "answer 2 · 2 tokens" in html and "plain" in html and "esamp β=1" in html
    one = live_html([("plain", (("The",), ()))], per_prompt=2)  # a count says "token" of one (a projector reads it)
    assert "answer 1 · 1 token<" in one and "answer 2 · 0 tokens<" in one


def test_count_says_one_token_and_many_tokens():
    from viz.style import count

    assert [count(n, "token") for n in (0, 1, 2)] == ["0 tokens", "1 token", "2 tokens"]
