"""The READMEs quote the benchmarks' results files exactly (benchmarks/quote_results.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quote_results", ROOT / "benchmarks" / "quote_results.py")
quote_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quote_results)

RESULTS = (
    "# Speed\n\n| setting | s |\n|---|---|\n| defaults | 42.3 |\n\n"
    "Per stage, idle machine:\n\n| stage | s |\n|---|---|\n| masks | 18.3 |\n"
)


def _repo(tmp_path: Path, readme: str) -> Path:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "speed.md").write_text(RESULTS)
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_every_quoted_result_in_this_repository_matches_its_file():
    assert sum(len(quote_results.quotes(doc)) for doc in quote_results.docs()) > 0
    assert quote_results.check() == []


def test_a_whole_file_and_a_single_table_with_its_caption_are_quoted_and_a_changed_figure_is_named(tmp_path):
    readme = (
        "Intro.\n<!-- results: benchmarks/results/speed.md -->\n"
        + RESULTS.rstrip("\n")
        + "\n<!-- end results -->\n\nStages:\n<!-- results: benchmarks/results/speed.md table 2 -->\n"
        "Per stage, idle machine:\n\n| stage | s |\n|---|---|\n| masks | 18.3 |\n<!-- end results -->\n"
    )
    root = _repo(tmp_path, readme)
    assert quote_results.check(root) == []
    whole, table = readme.split("Stages:")
    (root / "README.md").write_text(whole + "Stages:" + table.replace("| masks | 18.3 |", "| masks | 12.4 |"))
    assert quote_results.check(root) == [
        "README.md:17: differs from benchmarks/results/speed.md table 2; run `benchmarks/quote_results.py update`"
    ]


def test_update_writes_each_block_from_its_file_and_leaves_the_rest(tmp_path):
    root = _repo(
        tmp_path,
        "Before.\n<!-- results: benchmarks/results/speed.md table 1 -->\nold\n<!-- end results -->\n"
        "Middle.\n<!-- results: benchmarks/results/speed.md table 2 -->\n<!-- end results -->\nAfter.\n",
    )
    quote_results.update(root)
    assert (root / "README.md").read_text() == (
        "Before.\n<!-- results: benchmarks/results/speed.md table 1 -->\n| setting | s |\n|---|---|\n"
        "| defaults | 42.3 |\n<!-- end results -->\nMiddle.\n<!-- results: benchmarks/results/speed.md table 2 -->\n"
        "Per stage, idle machine:\n\n| stage | s |\n|---|---|\n| masks | 18.3 |\n<!-- end results -->\nAfter.\n"
    )
    assert quote_results.check(root) == []


@pytest.mark.parametrize(
    "block, message",
    [
        ("<!-- results: benchmarks/results/gone.md -->\n<!-- end results -->\n", "quotes benchmarks/results/gone.md, "),
        ("<!-- results: benchmarks/results/speed.md table 3 -->\n<!-- end results -->\n", "which has 2"),
    ],
)
def test_a_missing_file_or_table_is_one_line_and_update_leaves_the_readme_alone(tmp_path, block, message):
    root = _repo(tmp_path, "Text.\n" + block)
    [problem] = quote_results.check(root)
    assert problem.startswith("README.md:2: ") and message in problem
    with pytest.raises(SystemExit, match=message):
        quote_results.update(root)
    assert (root / "README.md").read_text() == "Text.\n" + block


def test_a_start_marker_without_its_end_names_the_line(tmp_path):
    root = _repo(tmp_path, "Text.\n\n<!-- results: benchmarks/results/speed.md -->\n| a |\n")
    with pytest.raises(SystemExit, match=r"README.md:3: a results quote without its"):
        quote_results.check(root)
