"""The Streamlit pages driven by AppTest on the embedded model, with tiny settings."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.render import md

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
PAGES = str(Path(APP).parent / "views")


@pytest.fixture(scope="module", autouse=True)
def history_db(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("history") / "history.sqlite3"
    os.environ["ESAMP_HISTORY_DB"] = str(path)
    from app.resources import get_history

    get_history.clear()
    yield path
    get_history.clear()


def run_until(at: AppTest, done, timeout: float = 300) -> AppTest:
    """Rerun the page (as the polling fragment would) until done(at) or the time runs out."""
    end = time.time() + timeout
    at.run(timeout=120)
    while not done(at) and time.time() < end:
        assert not at.exception, at.exception
        time.sleep(0.5)
        at.run(timeout=120)
    return at


def open_page(name: str) -> AppTest:
    """A page of the app, through its entry point (which draws the sidebar's model choice)."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page(f"{PAGES}/{name}.py")
    return at.run()


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for e in [*at.success, *at.markdown, *at.caption, *at.info, *at.error, *at.warning])


def explore(prompt="Name a colour.", **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in {"n": 2, "tokens": 8, "seed": 0, **params}.items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception, at.exception
    at.text_area[0].input(prompt)
    at.button[0].click()
    return run_until(at, lambda a: "Saved as run" in texts(a))


def test_explore_generates_esamp_and_plain_side_by_side():
    at = explore()
    assert not at.exception, at.exception
    assert "Saved as run" in texts(at)
    assert [h.value for h in at.subheader][:2] == ["esamp β=0.25", "plain"]
    htmls = [h for h in at.get("html")]
    assert len(htmls) == 2 and all("esx-tok" in h.proto.body for h in htmls)
    assert len(at.get("plotly_chart")) == 3  # spread, loss, novelty
    assert any("python -m core generate" in c.value for c in at.code)
    assert at.query_params["prompt"] == "Name a colour." and at.query_params["beta"] == "0.25"  # shareable URL


def test_explore_runs_on_the_vllm_backend():
    pytest.importorskip("vllm")
    at = explore(backend="vllm")
    assert not at.exception, at.exception
    assert [h.value for h in at.subheader][:2] == ["esamp β=0.25", "plain"]
    assert all("esx-tok" in h.proto.body for h in at.get("html"))
    assert any("--backend vllm" in c.value for c in at.code)
    assert at.query_params["backend"] == "vllm"


def test_changing_the_heatmap_signal_does_not_regenerate():
    at = explore()
    before = [h.proto.body for h in at.get("html")]
    run_id = [s.value for s in at.success]
    next(b for b in at.selectbox if b.label == "Colour tokens by").select("logp_gain").run()
    assert not at.exception
    assert [s.value for s in at.success] == run_id  # same run, nothing new generated
    after = [h.proto.body for h in at.get("html")]
    assert after != before and "log p gain" in after[0]


def test_an_empty_prompt_is_refused_next_to_the_widget():
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_area[0].input("   ")
    at.button[0].click().run()
    assert not at.exception
    assert any("empty" in e.value for e in at.error)


def test_an_unknown_model_is_refused_with_a_clear_message(tmp_path):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input[0].input(str(tmp_path / "nope"))
    at.button[0].click().run()
    assert not at.exception
    assert any("Cannot load model" in e.value for e in at.error)


def test_history_reopens_a_saved_run_with_its_pictures():
    explore("Name a fruit.")
    at = open_page("runs")
    assert not at.exception, at.exception
    assert len(at.dataframe) >= 2  # the run list and the reopened run's metrics
    assert len(at.get("html")) == 2 and len(at.get("plotly_chart")) == 3


def test_sweep_beta_and_temperature():
    at = open_page("sweep")
    at.multiselect[0].set_value([0.5])
    at.multiselect[1].set_value([1.0])
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(6)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) > 0)
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 1


def test_sweep_task_mode_shows_pass_at_k():
    at = open_page("sweep")
    at.radio[0].set_value("Task: pass@k").run()
    at.slider[0].set_value(2)
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(6)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) > 0)
    assert not at.exception, at.exception
    rows = at.dataframe[0].value
    assert list(rows["method"]) == ["esamp β=0.25", "plain", "min-p 0.1", "fire"]


def test_learn_page_steps_through_a_fusion():
    at = open_page("learn")
    at.slider[1].set_value(6)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)
    assert not at.exception, at.exception
    assert any("fusion step" in h.value for h in at.subheader)
    assert len(at.get("plotly_chart")) == 2 and len(at.get("html")) == 1


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
    at.slider[1].set_value(4)
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
    at.multiselect[0].set_value([0.5])
    at.multiselect[1].set_value([1.0])
    at.number_input[0].set_value(2)
    at.number_input[1].set_value(4)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) > 0)
    assert not at.exception, at.exception
    assert {t.model for t in at.session_state["sweep_run"].job.traces} == {tiny_model_dir}


def test_the_model_choice_is_shared_by_every_page():
    at = AppTest.from_file(APP, default_timeout=120)
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
    if page in ("explore", "sweep", "runs"):  # Learn saves nothing
        assert md(damaged_db) in texts(at) and "not a database" in texts(at)


def test_explore_still_generates_with_a_damaged_history(damaged_db):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(n="2", tokens="4")
    at.run()
    at.button[0].click()
    run_until(at, lambda a: "Done." in texts(a))
    assert not at.exception, at.exception
    assert len(at.get("html")) == 2 and "Runs are not saved" in texts(at)


def test_history_moves_a_damaged_file_aside_and_starts_fresh(damaged_db):
    at = open_page("runs")
    at.button[0].click().run()
    assert not at.exception, at.exception
    kept = list(damaged_db.parent.glob("damaged.sqlite3.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"not a database")  # kept, not deleted
    at.run()
    assert "No runs yet" in texts(at)


def test_hostile_url_parameters_are_clamped_and_the_page_renders():
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in {"beta": "1e9", "n": "100000", "tokens": "-5", "T": "nan", "seed": "abc", "top_p": "0",
                 "top_k": "-3", "min_p": "inf", "raw": "7", "backend": "../../etc", "prompt": "x" * 100_000}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    assert at.slider[0].value == 1.0  # beta, clamped to the slider
    n, tokens, seed, temperature, top_k, top_p, min_p = (w.value for w in at.number_input)
    assert (n, tokens, seed, top_k) == (16, 1, 0, 0) and temperature == 1.0 and top_p == 0.01 and min_p == 0.0
    assert len(at.text_area[0].value) == 4000 and at.sidebar.selectbox[0].value == "transformers"


def test_a_bad_server_setting_is_named_on_the_page(monkeypatch):
    monkeypatch.setenv("ESAMP_MAX_N", "lots")
    at = AppTest.from_file(APP, default_timeout=120).run()
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
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(model="/etc", n="10", tokens="200")
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
