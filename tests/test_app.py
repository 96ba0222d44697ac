"""The Streamlit pages driven by AppTest on the embedded model, with tiny settings."""

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.render import CANDIDATE_COLUMNS, PAGE_STYLE, md
from app.settings import DEFAULTS, parse_ladder

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
TIMEOUT_S = 900  # one script run of a page (a model load on a busy machine is the slowest): a ceiling, not a pace
PAGES = str(Path(APP).parent / "views")


@pytest.fixture(scope="module", autouse=True)
def history_db(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("history") / "history.sqlite3"
    os.environ["ESAMP_HISTORY_DB"] = str(path)
    # AppTest runs the pages in this process: no default model (a vLLM engine) loaded behind the tests
    preload = os.environ.get("ESAMP_PRELOAD")
    os.environ["ESAMP_PRELOAD"] = "0"
    from app.resources import get_history

    get_history.clear()
    yield path
    get_history.clear()
    if preload is None:
        del os.environ["ESAMP_PRELOAD"]
    else:
        os.environ["ESAMP_PRELOAD"] = preload


def run_until(at: AppTest, done, quiet_s: float = 600, ceiling_s: float = 1800) -> AppTest:
    """Rerun the page (as the polling fragment would) until done(at). A busy machine only slows it: it
    gives up when the page has not changed for ``quiet_s`` (a running job's progress changes it every
    step) or after ``ceiling_s``."""
    start = last = time.time()
    at.run(timeout=ceiling_s)
    seen = shown(at)
    while not done(at) and time.time() - last < quiet_s and time.time() - start < ceiling_s:
        assert not at.exception, at.exception
        time.sleep(0.5)
        at.run(timeout=ceiling_s)
        if shown(at) != seen:
            seen, last = shown(at), time.time()
    return at


def shown(at: AppTest) -> str:
    """Everything a page says, its progress bars' text included (a running job changes it every step)."""
    return texts(at) + " ".join(str(p.proto.text) for p in at.get("progress"))


def open_page(name: str) -> AppTest:
    """A page of the app, through its entry point (which draws the sidebar's model choice), on the
    transformers backend (the one the test session's other tests load)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params["backend"] = "transformers"
    at.run()
    at.switch_page(f"{PAGES}/{name}.py")
    return at.run()


def shown_html(at: AppTest) -> list:
    """The page's st.html blocks (answers, heatmaps), without the entry point's page style."""
    return [h for h in at.get("html") if h.proto.body != PAGE_STYLE]


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.success, *at.markdown, *at.caption, *at.info, *at.error, *at.warning])


def explore(prompt="Name a colour.", **params) -> AppTest:
    """Explore's Generate from a link's settings. No warm-up unless asked (warmup=None: the app's own
    default): in these 8-token runs the default's would leave every token unguided."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    for k, v in {"n": 2, "tokens": 8, "seed": 0, "ladder": "0,0.25", "backend": "transformers", "warmup": 0,
                 **params}.items():
        if v is not None:
            at.query_params[k] = str(v)
    at.run()
    assert not at.exception, at.exception
    at.text_area[0].input(prompt)
    at.button[0].click()
    return run_until(at, lambda a: "Saved as run" in texts(a))


def test_explore_generates_plain_and_esamp_side_by_side():
    at = explore(warmup=None)
    assert not at.exception, at.exception
    assert "Saved as run" in texts(at)
    assert [h.value for h in at.subheader][:2] == ["plain", "esamp β=0.25"]
    htmls = shown_html(at)
    assert len(htmls) == 2 and all("esx-tok" in h.proto.body for h in htmls)
    assert len(at.get("plotly_chart")) == 7  # spread, distances, where β sits, the forks, the tree, loss, novelty
    assert any(h.value.startswith("Where ESamp steered") for h in at.subheader)
    assert any(h.value.startswith("The answers as a tree") for h in at.subheader)
    assert any("python -m core generate" in c.value for c in at.code)
    assert at.query_params["prompt"] == "Name a colour." and at.query_params["ladder"] == "0,0.25"  # shareable URL
    assert at.query_params["beta"] == "0.25" and at.query_params["warmup"] == str(DEFAULTS["warmup"]) == "0"
    assert at.query_params["max_kl"] == f"{DEFAULTS['max_kl']:g}" == "1"  # the bound, at the ladder's top β
    assert at.query_params["level"] == "1" and at.query_params["words"] == "1"  # leveled, between words
    esamp = at.session_state["explore_job"].traces[1]
    assert esamp.config.esamp.max_kl == 1.0 and 0 < max(t.kl for s in esamp.samples for t in s.tokens) <= 1.0 + 1e-6
    assert esamp.config.esamp.keep_entropy and esamp.config.esamp.between_words
    for trace in at.session_state["explore_job"].traces:  # each run says how many of its answers the model ended
        ended = sum(s.finish_reason == "eos" for s in trace.samples)
        assert any(f" · {ended} of {len(trace.samples)} answers ended by the model" in c.value for c in at.caption)


def test_the_warm_up_goes_from_the_link_into_every_run_and_the_command(monkeypatch):
    calls = spy_on_generate(monkeypatch)
    at = explore(ladder="0,1", warmup=2)
    assert [c.esamp.warmup_steps for c in calls] == [2, 2]
    assert any("--warmup-steps 2" in c.value for c in at.code) and at.query_params["warmup"] == "2"


def test_the_paper_push_from_the_form_goes_into_every_run_the_command_and_the_link(monkeypatch):
    calls = spy_on_generate(monkeypatch)
    at = explore(ladder="0,1")
    assert [c.esamp.keep_entropy for c in calls] == [True, True] and at.query_params["level"] == "1"  # the default
    calls.clear()
    at = explore(ladder="0,1", level=0)  # the form's "Leveled push" box, unticked by the link
    (box,) = [c for c in at.checkbox if c.label.startswith("Leveled push")]
    assert [c.esamp.keep_entropy for c in calls] == [False, False] and not box.value
    assert any("--unleveled" in c.value for c in at.code) and at.query_params["level"] == "0"


def test_reloading_a_runs_link_reopens_it_from_history_without_generating(monkeypatch):
    first = explore(prompt="Name a fruit.", ladder="0,0.5", seed=3)
    url = dict(first.query_params)
    calls = spy_on_generate(monkeypatch)
    again = AppTest.from_file(APP, default_timeout=120)  # a fresh session: the page reloaded
    for k, v in url.items():
        again.query_params[k] = v if isinstance(v, str) else v[0]
    again.run()
    assert not again.exception, again.exception
    assert any("reopened from History" in i.value for i in again.info), [i.value for i in again.info]
    assert [h.value for h in again.subheader][:2] == ["plain", "esamp β=0.5"] and calls == []
    again.query_params["seed"] = "4"  # another seed: no such run, the form alone
    again.run()
    assert not any("reopened from History" in i.value for i in again.info)


def test_a_page_reloaded_during_its_generate_finds_the_run_going_on():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    for k, v in {"n": 2, "tokens": 48, "seed": 7, "ladder": "0,0.5", "backend": "transformers", "warmup": 0}.items():
        at.query_params[k] = str(v)
    at.run()
    at.text_area[0].input("Name a river.")
    at.button[0].click().run()
    job = at.session_state["explore_job"]
    assert not job.finished
    again = AppTest.from_file(APP, default_timeout=TIMEOUT_S)  # a fresh session: the page reloaded mid-run
    for k, v in dict(at.query_params).items():
        again.query_params[k] = v if isinstance(v, str) else v[0]
    again.run()
    assert not again.exception, again.exception
    assert again.session_state["explore_job"] is job  # the same run, followed here
    assert any("still running" in i.value for i in again.info), [i.value for i in again.info]
    run_until(again, lambda a: "Saved as run" in texts(a))
    assert [h.value for h in again.subheader][:2] == ["plain", "esamp β=0.5"]


def spy_on_generate(monkeypatch) -> list:
    """Every run the app's jobs ask core.generate_runs for (the real one runs)."""
    import app.jobs

    calls, real = [], app.jobs.generate_runs
    monkeypatch.setattr(app.jobs, "generate_runs", lambda *a, **k: calls.extend(a[2]) or real(*a, **k))
    return calls


def metric_values(at: AppTest) -> list[str]:
    return [m.value for m in at.metric]


def test_the_beta_slider_moves_across_the_ladder_without_generating_again(monkeypatch):
    calls = spy_on_generate(monkeypatch)
    at = explore(n=3, tokens=8, ladder="0, 0.5, 0.25", temps="1.3")
    assert not at.exception, at.exception
    assert [c.beta for c in calls] == [0.0, 0.25, 0.5, 0.0]  # the ladder, sorted, then plain at T=1.3
    assert calls[-1].sampling.temperature == 1.3 and at.query_params["temps"] == "1.3"
    slider = at.select_slider[0]
    assert slider.options == ["0 (plain)", "0.25", "0.5"] and slider.value == 0.5  # opens at the URL's β
    seen = []
    for beta in (0.0, 0.5, 0.25):
        at.select_slider[0].set_value(beta).run()
        assert not at.exception, at.exception
        label = "plain" if beta == 0 else f"esamp β={beta:g}"
        shown = ["plain"] if beta == 0 else ["plain", label]  # at β = 0 plain alone, else beside ESamp
        assert [h.value for h in at.subheader][:len(shown) + 1] == [*shown, "Semantic spread"]
        heatmaps = tuple(h.proto.body for h in shown_html(at)[:len(shown)])  # the others are in an expander
        answers = [t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"] if "customdata" in t]
        assert answers[-1]["name"] == label and answers[-1]["marker"]["size"] > answers[0]["marker"]["size"]
        seen.append((heatmaps, tuple(metric_values(at)), at.query_params["beta"]))
        table = at.dataframe[0].value
        assert list(table)[3:7] == ["cosine distance", "95% interval", "perplexity", "broken answers"]  # in view
        assert list(table["run"][table[""] == "▶"]) == ["plain" if beta == 0 else f"esamp β={beta:g}"]
    # heatmaps and metrics followed: a heatmap for each run, metrics as many as the runs' answers differ
    # (two βs may draw the same 3 x 8 tokens, under the bound that is chance)
    traces = at.session_state["explore_job"].traces  # the ladder sorted: 0, 0.25, 0.5
    answers = {b: tuple(s.text for s in t.samples) for b, t in zip((0.0, 0.25, 0.5), traces)}
    assert len({s[0] for s in seen}) == 3 and len({s[1] for s in seen}) == len(set(answers.values())) > 1
    assert [s[2] for s in seen] == ["0", "0.5", "0.25"]  # the URL follows the slider
    assert len(calls) == 4  # and nothing was generated again
    assert any("plain" in i.value and "noise" in i.value for i in at.info)  # the sentence on noise


def test_an_answer_opens_from_the_spread_with_its_heatmap():
    at = explore(n=3, ladder="0,1")
    job = at.session_state["explore_job"]
    picker = next(s for s in at.selectbox if s.label.startswith("Open an answer"))
    assert picker.value is None and len(picker.options) == 1 + 6  # none, then every answer of both runs
    picker.select("1:2").run()
    assert not at.exception, at.exception
    opened = shown_html(at)[-1].proto.body
    assert len(shown_html(at)) == 3 and job.traces[1].samples[2].tokens[0].text.strip()[:3] in opened
    assert "answer 3" in picker.format_func("1:2")  # the same number as on its card
    tokens = next(d.value for d in at.dataframe if "relative novelty" in d.value.columns)  # no hover needed
    assert list(tokens["#"]) == list(range(1, len(job.traces[1].samples[2].tokens) + 1))


@pytest.mark.parametrize("points, picked", [
    ([], None), ([{"point_index": 0}], None), ([{"customdata": "1:2"}], "1:2"),
    ([{"customdata": None}, {"customdata": ["0:3"]}], "0:3")])
def test_a_click_on_the_spread_names_the_answer_under_it(points, picked):
    from app.render import picked_answer

    assert picked_answer(points) == picked


@pytest.mark.parametrize("ladder, temps, error", [
    ("", "", "at least one value"), ("0, x", "", "'x' is not a number"), ("0, 20", "", "outside 0 to 10"),
    ("0,1,2,3,4,5,6,7,8", "", "at most 8"), ("0, 0.5", "0.7 1.3 1.6 2 2.5 3 3.5", "at most 8 in one Generate"),
    ("0", "abc", "Temperatures: 'abc'")])
def test_a_bad_ladder_is_refused_next_to_the_widget(monkeypatch, ladder, temps, error):
    calls = spy_on_generate(monkeypatch)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    fields = {t.label: t for t in at.text_input}
    fields["β ladder"].input(ladder)
    fields["Also plain at temperatures (optional)"].input(temps)
    at.button[0].click().run()
    assert not at.exception
    assert any(error in e.value.replace("\\", "") for e in at.error), [e.value for e in at.error]
    assert calls == []


def test_an_empty_prompt_is_refused_next_to_the_widget():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    at.text_area[0].input("   ")
    at.button[0].click().run()
    assert not at.exception
    assert any("empty" in e.value for e in at.error)


def test_a_prompt_over_the_limit_is_refused_and_kept_in_the_box():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    long = "Describe the sea. " * 300  # 5,400 characters: the limit is 4,000
    at.text_area[0].input(long)
    at.button[0].click().run()
    assert not at.exception
    assert any("5,400 characters" in e.value and "4,000" in e.value for e in at.error), [e.value for e in at.error]
    assert at.text_area[0].value == long  # nothing lost: the text is still there to shorten


def test_an_unknown_model_is_refused_with_a_clear_message(tmp_path):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    at.sidebar.text_input[0].input(str(tmp_path / "nope"))
    at.button[0].click().run()
    assert not at.exception
    assert any("Cannot load model" in e.value for e in at.error)


def test_history_reopens_a_saved_run_with_its_pictures():
    ran = explore("Name a fruit.", ladder="0,0.25,1")
    at = open_page("runs")
    assert not at.exception, at.exception
    assert len(at.dataframe) >= 2  # the run list and the reopened run's metrics
    assert len(shown_html(at)) == 3  # plain and β = 1 side by side, β = 0.25 among the other answers
    assert len(at.get("plotly_chart")) == 7  # the fork chart and the tree too
    assert at.select_slider[0].options == ["0 (plain)", "0.25", "1"]  # the ladder reopens with its slider,
    assert at.select_slider[0].value == ran.select_slider[0].value == 1  # on the rung Explore opened it on


def test_sweep_beta_and_temperature():
    at = open_page("sweep")
    at.multiselect[0].set_value([0.5])
    at.multiselect[1].set_value([1.0])
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(6)
    at.number_input[1].set_value(40)  # long enough to be running still at the second click
    (box,) = [c for c in at.checkbox if c.label.startswith("Leveled push")]
    assert box.value is bool(DEFAULTS["level"])
    box.uncheck()  # the paper's push, for this sweep
    at.button[0].click().run()
    at.button[0].click().run()  # a second submit while the first sweep runs starts nothing
    assert any("still running" in w.value for w in at.warning), [w.value for w in at.warning]
    run_until(at, lambda a: len(a.get("plotly_chart")) > 0)
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 1
    assert len(at.session_state["sweep_run"].job.traces) == 2
    esamp = at.session_state["sweep_run"].job.traces[0].config  # Explore's candidates, warm-up and bound, as said
    assert (esamp.sampling.top_k, esamp.sampling.top_p, esamp.esamp.warmup_steps, esamp.esamp.max_kl) == (
        DEFAULTS["top_k"], DEFAULTS["top_p"], DEFAULTS["warmup"], DEFAULTS["max_kl"])  # its top β: the bound
    assert esamp.esamp.keep_entropy is False  # the box unticked
    assert any("Explore's candidates" in c.value for c in at.caption)
    rows = at.dataframe[0].value
    assert list(rows["run"]) == ["esamp β=0.5", "plain T=1"] and set(rows["± s.e. over prompts"]) == {"—"}
    assert any("none with one prompt" in w.value for w in at.warning)  # one prompt, n = 2: said so
    at.radio[0].set_value("Task: pass@k").run()  # the diversity sweep's results are not shown under the task form
    assert not at.get("plotly_chart") and any("switch back" in i.value for i in at.info)


def small_sweep(at: AppTest, tokens: int) -> AppTest:
    """Sweep's diversity mode with ESamp at β = 0.5 and plain at T = 1, n = 2, until its chart is drawn."""
    at.multiselect[0].set_value([0.5])
    at.multiselect[1].set_value([1.0])
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(tokens)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) > 0)
    assert not at.exception, at.exception
    return at


def test_sweep_task_mode_shows_pass_at_k():
    at = open_page("sweep")
    at.radio[0].set_value("Task: pass@k").run()
    assert not at.get("file_uploader")  # built-in arithmetic: nothing to upload
    at.slider[0].set_value(2)
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(6)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) > 0)
    assert not at.exception, at.exception
    rows = at.dataframe[0].value
    assert list(rows["method"]) == ["esamp β=0.25", "plain", "min-p 0.1", "fire"]
    assert any("moves a curve by 0.50" in c.value and "chance" in c.value for c in at.caption)  # 2 problems: noise


def test_learn_page_steps_through_a_fusion():
    at = open_page("learn")
    at.slider[0].set_value(14)  # past the warm-up (DEFAULTS["warmup"] + 1 tokens unguided)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)
    assert not at.exception, at.exception
    assert any(f"fusion step at β = {DEFAULTS['beta']:g}" in h.value for h in at.subheader)
    assert len(at.get("plotly_chart")) == 2 and len(shown_html(at)) == 1
    job = at.session_state["learn_job"]
    assert tuple(t.config.beta for t in job.traces) == parse_ladder(DEFAULTS["ladder"])  # the default ladder
    before = at.dataframe[0].value
    formats = json.loads(at.dataframe[0].proto.columns)  # the candidates' numbers shown in a few digits
    assert set(CANDIDATE_COLUMNS) <= set(before)
    assert {name: formats.get(name, {}).get("type_config", {}).get("format") for name in CANDIDATE_COLUMNS} == \
        {name: c["type_config"]["format"] for name, c in CANDIDATE_COLUMNS.items()}
    at.select_slider[0].set_value(0.0).run()  # one slider in front of the class: no new generation
    assert not at.exception and at.session_state["learn_job"] is job
    assert any("fusion step at β = 0:" in h.value for h in at.subheader)
    after = at.dataframe[0].value
    assert list(after["p before"]) == list(after["p after"]) and not before.equals(after)
    run_until(at, lambda a: at.session_state["learn_job"].finished)
    assert at.session_state["learn_job"].result  # saved in History like every other page's runs


def test_markdown_escaping_leaves_no_link_image_or_tag():
    from markdown_it import MarkdownIt

    from app.render import md

    evil = '![x](http://e/p.png) [a](javascript:alert(1)) <b>hi</b> **bold** `c` $x$ :smile: # head\nline'
    html = MarkdownIt("commonmark").render(md(evil))
    assert "<img" not in html and "<a" not in html and "<b>" not in html and "<strong>" not in html
    assert "<code>" not in html and "<h1>" not in html
    assert "![x](http://e/p.png)" in html.replace("&lt;", "<").replace("&gt;", ">")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random llama saved locally: a non-default model that loads without a hub."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_the_reproduce_command_names_the_model_unless_it_is_the_embedded_one():
    from dataclasses import replace

    from app.render import reproduce_command
    from core import DEFAULT_MODEL, RunTrace

    trace = RunTrace.load(Path(__file__).parent / "data" / "trace-v1-with-logp-base.json")
    assert "--model" not in reproduce_command(replace(trace, model=DEFAULT_MODEL))
    assert "--model /models/my-llama" in reproduce_command(replace(trace, model="/models/my-llama"))


def test_history_reproduces_a_run_of_another_model_with_its_model(tiny_model_dir):
    """A run made with a non-default model, reopened in History: its command line names that model."""
    from app.resources import open_history
    from core import RunConfig, SamplingConfig, generate, load_model

    trace = generate(load_model(tiny_model_dir), ["Hi"], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=3)))
    open_history()[0].save([trace])
    at = open_page("runs")
    assert not at.exception, at.exception
    assert any(f"--model {tiny_model_dir}" in c.value for c in at.code)


def test_learn_runs_on_the_model_chosen_in_the_sidebar(tiny_model_dir):
    at = open_page("learn")
    at.sidebar.text_input[0].input(tiny_model_dir)
    next(t for t in at.text_input if t.label == "β ladder").input("0,0.5")
    at.slider[0].set_value(4)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)
    assert not at.exception, at.exception
    assert md(tiny_model_dir) in texts(at)  # the page says which model it runs (escaped: a name is user input)
    assert at.session_state["learn_job"].traces[0].model == tiny_model_dir


def test_sweep_runs_on_the_model_chosen_in_the_sidebar(tiny_model_dir, tmp_path):
    at = open_page("sweep")
    at.sidebar.text_input[0].input(str(tmp_path / "no-such-model")).run()
    at.button[0].click().run()
    assert not at.exception
    assert any("Cannot load model" in e.value for e in at.error)  # it tried the chosen model, not the default
    at.sidebar.text_input[0].input(tiny_model_dir)
    small_sweep(at, tokens=4)
    assert {t.model for t in at.session_state["sweep_run"].job.traces} == {tiny_model_dir}


def test_the_model_choice_is_shared_by_every_page():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params["model"] = "/models/from-the-url"
    at.run()
    assert at.sidebar.text_input[0].value == "/models/from-the-url"
    at.switch_page(PAGES + "/learn.py").run()
    assert at.sidebar.text_input[0].value == "/models/from-the-url" and md("/models/from-the-url") in texts(at)


# --- things going wrong: damaged history, hostile URLs, a served deployment ---------------------------

PAGE_NAMES = ["explore", "sweep", "runs", "learn"]


@pytest.fixture
def damaged_db(tmp_path, monkeypatch):
    path = tmp_path / "damaged.sqlite3"
    path.write_bytes(b"not a database at all " * 100)
    monkeypatch.setenv("ESAMP_HISTORY_DB", str(path))
    return path


@pytest.mark.parametrize("page", PAGE_NAMES)
def test_every_page_renders_with_a_damaged_history_and_says_so(damaged_db, page):
    at = open_page(page)
    assert not at.exception, at.exception
    assert md(damaged_db) in texts(at) and "not a database" in texts(at)


def test_explore_still_generates_with_a_damaged_history(damaged_db):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params.update(n="2", tokens="4", ladder="0,0.25", backend="transformers")
    at.run()
    at.button[0].click()
    run_until(at, lambda a: "Done." in texts(a))
    assert not at.exception, at.exception
    assert len(shown_html(at)) == 2 and "Runs are not saved" in texts(at)


def test_history_moves_a_damaged_file_aside_and_starts_fresh(damaged_db):
    at = open_page("runs")
    at.button[0].click().run()
    assert not at.exception, at.exception
    kept = list(damaged_db.parent.glob("damaged.sqlite3.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"not a database")  # kept, not deleted
    at.run()
    assert "No runs yet" in texts(at)


def test_hostile_url_parameters_are_clamped_and_the_page_renders():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    for k, v in {"beta": "1e9", "ladder": "<script>", "temps": "1e99", "n": "100000", "tokens": "-5", "T": "nan",
                 "seed": "abc", "top_p": "0", "top_k": "-3", "min_p": "inf", "raw": "7", "backend": "../../etc",
                 "warmup": "-4", "max_kl": "-1e9", "prompt": "x" * 100_000}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    fields = {t.label: t.value for t in at.text_input}
    assert fields["β ladder"] == "<script>" and fields["Also plain at temperatures (optional)"] == "1e99"
    n, tokens, seed, warmup, max_kl, temperature, top_k, top_p, min_p = (w.value for w in at.number_input)
    assert (n, tokens, seed, warmup, top_k) == (16, 1, 0, 0, 0) and temperature == 1.0 and top_p == 0.01
    assert min_p == 0.0 and max_kl == 0.0
    assert len(at.text_area[0].value) == 4000 and at.sidebar.selectbox[0].value == DEFAULTS["backend"]


def test_a_bad_server_setting_is_named_on_the_page(monkeypatch):
    monkeypatch.setenv("ESAMP_MAX_N", "lots")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert any(md("$ESAMP_MAX_N") in e.value for e in at.error)


@pytest.fixture
def served(monkeypatch, tiny_model_dir):
    models = Path(tiny_model_dir).parent
    monkeypatch.setenv("ESAMP_SERVED", "1")
    monkeypatch.setenv("ESAMP_MODELS_DIR", str(models))
    monkeypatch.setenv("ESAMP_MAX_N", "3")
    monkeypatch.setenv("ESAMP_MAX_NEW_TOKENS", "20")
    return Path(tiny_model_dir).name


def test_a_served_app_offers_only_its_models_and_its_limits(served):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    at.query_params.update(model="/etc", n="10", tokens="200", ladder="0,0.25", backend="transformers")
    at.run()
    assert not at.exception, at.exception
    assert not at.sidebar.text_input  # no free-form model name or path
    assert at.sidebar.selectbox[0].options == ["smollm2-135m-instruct (embedded)", served]
    assert at.sidebar.selectbox[0].value == ""  # not the URL's /etc
    assert "does not offer" in " ".join(c.value for c in at.sidebar.caption)
    assert [w.value for w in at.number_input[:2]] == [3, 20]  # the server's limits
    at.sidebar.selectbox[0].set_value(served)
    at.number_input[1].set_value(4)
    at.button[0].click()
    run_until(at, lambda a: "Saved as run" in texts(a))
    assert not at.exception, at.exception
    assert at.session_state["explore_job"].traces[0].model.endswith(served)


def _stopped_ladder_page():
    """render.comparison on a ladder whose last β was cut short by Stop (hand-made from a stored trace)."""
    from dataclasses import replace
    from pathlib import Path

    import streamlit as st

    from app import render
    from core import RunTrace, beta_ladder

    base = RunTrace.load(Path(st.session_state["data"]) / "trace-v2.json")
    configs = beta_ladder(base.config, [0, 0.25, 0.5])
    traces = [replace(base, config=c) for c in configs]
    cut = replace(traces[2].samples[0], tokens=traces[2].samples[0].tokens[:1], finish_reason="stopped")
    traces[2] = replace(traces[2], stopped=True, samples=[cut, replace(cut, sample_index=1)])
    render.comparison(traces, None, "t", beta=0.5)


def test_after_stop_the_slider_opens_on_a_finished_beta_and_a_cut_one_is_flagged():
    at = AppTest.from_function(_stopped_ladder_page, default_timeout=120)
    at.session_state["data"] = str(Path(__file__).parent / "data")
    at.run()
    assert not at.exception, at.exception
    assert at.select_slider[0].value == 0.25  # the URL asked for 0.5, which Stop cut short
    assert not any("stopped early" in w.value for w in at.warning)
    at.select_slider[0].set_value(0.5).run()
    assert not at.exception, at.exception
    assert any("esamp β=0.5 stopped early" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not any("noise" in i.value for i in at.info)  # no noise sentence on cut-short answers


def _finishing_page():
    """render.follow on a job whose worker finishes while the page draws its live answers."""
    import streamlit as st

    from app import render
    from app.jobs import Job

    class FinishesMidDraw(Job):
        def live(self):
            self.phase = "done"
            return [("plain", [["Red", "."]])]

    job = st.session_state.setdefault("job", FinishesMidDraw(["plain"], phase="running"))
    st.write(f"finished: {render.follow(job, 'k')}")


def test_a_job_that_finishes_while_its_live_answers_are_drawn_is_shown_finished_on_the_next_run_alone():
    at = AppTest.from_function(_finishing_page, default_timeout=120).run()
    assert not at.exception, at.exception
    assert "finished: False" in texts(at) and len(at.get("html")) == 1  # what the live view drew, no results below it
    at.run()
    assert "finished: True" in texts(at) and not at.get("html")


def test_a_job_whose_runs_wait_for_room_says_so():
    """A session whose runs find the vLLM engine full (other sessions' answers in every slot) hears why it
    has no tokens yet, not "0 tokens · 0.0 tokens/s"."""
    from app.jobs import Job
    from app.render import job_status
    from core.backends.base import Progress

    job = Job(["plain", "esamp β=1"], phase="running")
    job.progresses = {i: Progress(0, 32, 0, 512, 0.5, run=i, waiting=True) for i in (0, 1)}
    assert job_status(job).startswith("2 runs: waiting for room (")  # not "at once": none has begun
    job.progresses[1] = Progress(1, 32, 16, 512, 0.9, run=1)
    assert job_status(job) == "2 runs at once: 16 of 1024 tokens · 17.8 tokens/s"


def _branch_page():
    """render.comparison on a run with one branch of its answer 1 (hand-made from a stored trace)."""
    from dataclasses import replace
    from pathlib import Path

    import streamlit as st

    from app import render
    from core import RunTrace

    base = RunTrace.load(Path(st.session_state["data"]) / "trace-v4.json")
    answer = base.samples[0].tokens
    given = (answer[0].id, answer[1].top[-1].id)  # answer 1's first token, then its last-listed candidate
    branch = replace(base, config=replace(base.config, prefix_ids=given), samples=base.samples[1:])
    st.session_state["view"] = st.session_state.get("view", "parent")
    if st.session_state["view"] == "parent":
        render.comparison([base], None, "t", branches=[branch])
    else:
        render.comparison([branch], None, "t")


def test_a_branch_is_shown_where_it_left_its_answer_and_a_continuation_says_what_it_is():
    at = AppTest.from_function(_branch_page, default_timeout=120)
    at.session_state["data"] = str(Path(__file__).parent / "data")
    at.run()
    assert not at.exception, at.exception
    heading = next(h.value for h in at.subheader if h.value.startswith("Branch: answer 1 from token 2"))
    assert "instead of" in heading and heading.endswith(", 1 answer)")
    assert not any("A continuation" in c.value for c in at.caption)
    at.session_state["view"] = "branch"
    at.run()  # the branch on its own (as History reopens it): it says it continues given tokens
    assert any("A continuation: every answer here starts after 2 given tokens" in c.value for c in at.caption)
