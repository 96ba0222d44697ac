"""The catalogue of bad inputs, in one place so that it grows: every one ends in a clear error that
names the problem (a non-zero exit with one line, a ValueError, an on-page message), never a
traceback, a hang or a run that goes ahead anyway. Add a case here when a new one is found."""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core import RunConfig, SamplingConfig, generate, load_model
from core.backends.base import ModelLoadError
from core.tasks import tasks_from_jsonl

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # command line after `python -m core generate` (FILE: a file made by `files`)
    expect: str  # what the one-line error must say (a regular expression)
    files: tuple[tuple[str, bytes], ...] = ()

    def argv(self, tmp: Path) -> list[str]:
        for name, content in self.files:
            (tmp / name).write_bytes(content)
        return [a.replace("TMP", str(tmp)) for a in self.args]


CLI = [
    Case("no-prompt", [], "Give a prompt"),
    Case("empty-prompt", [""], "empty"),
    Case("blank-prompt", ["   \n "], "empty"),
    Case("n-zero", ["hi", "-n", "0"], "`n` must be"),
    Case("n-huge", ["hi", "-n", "100000"], "`n` must be"),
    Case("tokens-zero", ["hi", "--max-new-tokens", "0"], "`max_new_tokens` must be"),
    Case("tokens-huge", ["hi", "--max-new-tokens", "10000000"], "`max_new_tokens` must be"),
    Case("temperature-zero", ["hi", "--temperature", "0"], "`temperature`"),
    Case("temperature-nan", ["hi", "--temperature", "nan"], "`temperature`"),
    Case("top-p-zero", ["hi", "--top-p", "0"], "`top_p`"),
    Case("top-p-above-one", ["hi", "--top-p", "1.5"], "`top_p`"),
    Case("min-p-negative", ["hi", "--min-p", "-0.1"], "`min_p`"),
    Case("beta-nan", ["hi", "--beta", "nan"], "`beta`"),
    Case("beta-negative", ["hi", "--beta", "-1"], "`beta`"),
    Case("distiller-width-zero", ["hi", "--distiller-width", "0"], "`intermediate`"),
    Case("unknown-method", ["hi", "--method", "greedy"], "invalid choice"),
    Case("n-not-a-number", ["hi", "-n", "four"], "invalid int value"),
    Case("prompt-file-missing", ["--prompt-file", "TMP/none.txt"], "No such file"),
    Case("prompt-file-empty", ["--prompt-file", "TMP/p.txt"], "holds no prompt", (("p.txt", b"\n\n"),)),
    Case("prompt-file-not-utf8", ["--prompt-file", "TMP/p.txt"], "not UTF-8", (("p.txt", b"\xff\xfe\x00bad"),)),
    Case("jsonl-prompt-not-a-string", ["--prompt-file", "TMP/p.jsonl"], r"p.jsonl:1: 'prompt' must be a string",
         (("p.jsonl", b'{"prompt": 3}\n'),)),
    Case("jsonl-no-prompt-field", ["--prompt-file", "TMP/p.jsonl"], r"p.jsonl:2: .*'prompt' field",
         (("p.jsonl", b'{"prompt": "a"}\n{"text": "b"}\n'),)),
    Case("jsonl-broken-line", ["--prompt-file", "TMP/p.jsonl"], r"p.jsonl:1: .*JSONDecodeError",
         (("p.jsonl", b'{"prompt": "a"\n'),)),
    Case("jsonl-a-list", ["--prompt-file", "TMP/p.jsonl"], r"p.jsonl:1: ", (("p.jsonl", b'{"prompt": "a"} []\n'),)),
    Case("json-output-dir-missing", ["hi", "--json", "/no/such/dir/run.json"], "does not exist"),
    Case("json-output-is-a-dir", ["hi", "--json", "TMP"], "is a directory"),
    Case("device-cuda-missing", ["hi", "--device", "cuda:7"], "no CUDA GPU|CUDA GPU\\(s\\)"),
    Case("device-unknown", ["hi", "--device", "tpu"], "Unknown device|not supported"),
    Case("dtype-unknown", ["hi", "--dtype", "float33"], "Unknown dtype"),
    Case("model-unknown", ["hi", "--model", "no-such-org/no-such-model"], "Cannot load model"),
    Case("model-path-missing", ["hi", "--model", "/no/such/model/dir"], "Cannot load model"),
    Case("vllm-with-a-device", ["hi", "--backend", "vllm", "--device", "cpu"], "picks its device"),
    Case("prompt-longer-than-context", ["word " * 9000], "context"),
]


@pytest.mark.parametrize("case", CLI, ids=lambda c: c.id)
def test_the_command_line_refuses_with_one_line(case, tmp_path, capsys):
    from core.cli import main

    try:
        code = main(["generate", *case.argv(tmp_path)])
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code not in (0, None), f"{case.id} was accepted"
    last = err.splitlines()[-1]
    assert re.match(r"(python -m core( generate)?: )?error: ", last), err
    assert re.search(case.expect, last), f"{case.id}: {last!r}"
    assert "Traceback" not in err


@pytest.mark.parametrize("args,expect", [
    (["hi", "--device", "cuda:7"], "no CUDA GPU"),
    (["hi", "--json", "/no/such/dir/run.json", "-n", "1", "--max-new-tokens", "2"], "does not exist"),
])
def test_a_real_process_exits_non_zero_without_a_traceback(args, expect):
    """As a user runs it: a separate process, its exit code and its whole stderr."""
    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run([sys.executable, "-m", "core", "generate", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and expect in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    assert "trace written" not in out.stdout and not out.stdout.strip().count("--- prompt")  # failed before generating


# --- the Python API -------------------------------------------------------------------------------

@pytest.mark.parametrize("prompts,expect", [
    ([], "non-empty list"), ("a bare string", "non-empty list"), (["ok", ""], "Prompt 1 is empty"),
    ([3], "Prompt 0 is empty"), (["word " * 9000], "context"),
], ids=["no-prompts", "a-string", "one-empty", "not-a-string", "too-long"])
def test_generate_refuses_bad_prompts(lm, prompts, expect):
    with pytest.raises(ValueError, match=expect):
        generate(lm, prompts, RunConfig(sampling=SamplingConfig(n=1, max_new_tokens=2)))


@pytest.mark.parametrize("kwargs,expect", [
    ({"name": "no-such-org/no-such-model"}, "Cannot load model"),
    ({"device": "cuda:7"}, "no CUDA GPU|CUDA GPU"),
    ({"dtype": "float33"}, "Unknown dtype"),
    ({"backend": "tpu"}, "`backend` must be one of"),
])
def test_load_model_refuses_with_what_to_try(kwargs, expect):
    if kwargs.get("device") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises((ModelLoadError, ValueError), match=expect):
        load_model(**kwargs)


@pytest.mark.parametrize("make,expect", [
    (lambda: SamplingConfig(n=0), "`n` must be"),
    (lambda: SamplingConfig(temperature=float("inf")), "`temperature`"),
    (lambda: RunConfig(method="greedy"), "`method` must be one of"),
    (lambda: RunConfig(trace="everything"), "`trace` must be one of"),
], ids=["n", "temperature-inf", "method", "trace-level"])
def test_configs_refuse_out_of_range_values(make, expect):
    with pytest.raises(ValueError, match=expect):
        make()


# --- task files (the Sweep page's upload) ------------------------------------------------------------

@pytest.mark.parametrize("text,expect", [
    ('{"question": 3, "answer": 1}', "line 1: 'question' must be a non-empty string"),
    ('{"question": "q"}', "line 1: need a JSON object"),
    ('{"question": "q", "answer": [1]}', "line 1: 'answer' must be a number or a non-empty string"),
    ('{"question": "q", "answer": true}', "'answer' must be"),
    ('{"question": "", "answer": 1}', "'question' must be a non-empty string"),
    ('{"question": "q", "answer": 1}\nnot json', "line 2: need a JSON object"),
    ("[1, 2]", "line 1: need a JSON object"),
    ("\n\n", "holds no tasks"),
])
def test_task_files_name_the_line_and_the_problem(text, expect):
    with pytest.raises(ValueError, match=expect):
        tasks_from_jsonl(text)


@pytest.mark.parametrize("data,expect", [
    (b'{"question": "q", "answer": 1}\n' * 40_000, "1.2 MB; this server takes task files up to 1 MB"),
    (b'{"question": "caf\xe9", "answer": 1}', "not UTF-8 text"),
    (b'{"question": "q", "answer": null}', "line 1: 'answer' must be"),
])
def test_an_uploaded_task_file_is_checked_before_it_is_used(data, expect):
    from app.settings import read_task_file

    with pytest.raises(ValueError, match=re.escape(expect)):
        read_task_file(data, max_mb=1)


# --- trace files (`python -m viz report`) -------------------------------------------------------------

GOOD = (DATA / "trace-v2.json").read_text(encoding="utf-8")

TRACES = [
    ("missing", None, "No such file"),
    ("not-json", b"hello", "Expecting value"),
    ("truncated", GOOD[: len(GOOD) // 2].encode(), "Unterminated|Expecting"),
    ("newer-version", json.dumps({**json.loads(GOOD), "version": 99}).encode(), "version 99 is not supported"),
    ("a-list", b"[1, 2, 3]", "holds a list"),
    ("wrong-types", json.dumps({**json.loads(GOOD), "samples": "x"}).encode(), "Not a run trace"),
    ("missing-field", json.dumps({k: v for k, v in json.loads(GOOD).items() if k != "config"}).encode(),
     "Not a run trace"),
    ("not-utf8", b"\xff\xfe{}", "not UTF-8"),
    ("nested-200000-deep", b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
]


@pytest.mark.parametrize("name,content,expect", TRACES, ids=[t[0] for t in TRACES])
def test_viz_report_refuses_a_bad_trace_file_with_one_line(name, content, expect, tmp_path):
    path = tmp_path / f"{name}.json"
    if content is not None:
        path.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "viz", "report", str(path), "-o", str(tmp_path / "r.html")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and re.search(expect, last), last
    assert not (tmp_path / "r.html").exists()


def test_viz_report_refuses_an_output_in_a_missing_directory(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(GOOD, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "viz", "report", str(path), "-o", "/no/such/dir/r.html"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
