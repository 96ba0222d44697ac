"""The Streamlit pages driven by AppTest on the embedded model, with tiny settings."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

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
    from app.resources import get_history
    from core import RunConfig, SamplingConfig, generate, load_model

    trace = generate(load_model(tiny_model_dir), ["Hi"], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=3)))
    get_history().save([trace])
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
    assert tiny_model_dir in texts(at)  # the page says which model it runs
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
    assert at.sidebar.text_input[0].value == "/models/from-the-url" and "/models/from-the-url" in texts(at)
