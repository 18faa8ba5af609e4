"""The committed offline study (reports/offline/summary.json) is consistent, and the README shows its numbers."""
import pytest

from evoprune.readme import BEGIN, README, readme_section
from evoprune.records import read_json, ROOT
from evoprune.schema import validate_summary

SUMMARY = ROOT / "reports" / "offline" / "summary.json"


@pytest.fixture(scope="module")
def summary():
    assert SUMMARY.is_file(), "reports/offline/summary.json is missing: run `make reproduce PROFILE=offline`"
    return validate_summary(read_json(SUMMARY))


def test_genomes_meet_their_target_sparsity(summary):
    for ga in summary["ga"]:
        if ga["strategy"] != "published":  # this project's strategies: exactly the target
            assert ga["block_sparsity"] == pytest.approx(ga["target"], abs=1e-5), ga["run"]
        else:  # the published GA's penalty: at least target - tolerance, no upper bound
            assert ga["block_sparsity"] >= ga["min_sparsity"] - 1e-5, ga["run"]


def test_exact_target_searches_beat_uniform_at_the_same_target_on_test(summary):
    uniform = {round(u["sparsity"], 6): u for u in summary["uniform"]}
    for ga in summary["ga"]:
        if ga["strategy"] != "published" and round(ga["target"], 6) in uniform:
            same = uniform[round(ga["target"], 6)]
            assert ga["test_ppl"] < same["test_ppl"] and ga["study_ppl"] < same["study_ppl"]


def test_readme_shows_the_summary_numbers(summary):
    text = README.read_text()
    assert BEGIN in text, "README.md has no results section: run `make readme`"
    assert readme_section(summary) in text, "README results differ from summary.json: run `make readme`"


def test_block_removal_and_exports_round_trip(summary):
    removal = summary["removal"]
    assert len(removal["ga"]["removed"]) == removal["ga"]["settings"]["k"]
    assert [len(p["removed"]) for p in removal["points"]][-1] == removal["ga"]["settings"]["k"]
    assert removal["dense_ppl"] == removal["depths"][0]["test_ppl"] and removal["depths"][0]["removed"] == []
    assert len(removal["single"]) == removal["dense_blocks"] == summary["parameter_counts"]["n_blocks"]
    assert all(e["same_ppl"] for e in removal["exports"])


def test_the_performance_page_shows_the_bench_record():
    from evoprune.readme import BENCH, PERFORMANCE, bench_section
    assert BENCH.is_file(), "reports/bench.json is missing: run `make bench`, then `make readme`"
    assert bench_section(read_json(BENCH)) in PERFORMANCE.read_text(), \
        "docs/performance.md's bench table differs: `make readme`"

