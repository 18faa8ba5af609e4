"""A search is identified by its data's content: moved with its data it resumes; another text is refused."""
import shutil
from pathlib import Path

import pytest

from evoprune import EvopruneError, data_identity
from evoprune.objective import split_settings
from evoprune.records import read_csv
from evoprune.search import CHECKPOINT
from evoprune.search_runs import run_search
from evoprune.session import Session

FILES = ("wikitext-2-raw/test.txt", "wikitext-2/valid.txt")


def copy_data(source: str, to: Path) -> str:
    for rel in FILES:
        (to / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(source) / rel, to / rel)
    return str(to)


def search(data: str, out: Path, generations: int):
    settings, spec = split_settings(dict(model="tiny-gpt2", data=data, target=0.5, strategy="elitist", population=2,
                                         generations=generations, fitness_windows=1, test_windows=1, study_windows=0,
                                         dtype="float32"))
    return run_search(Session("tiny-gpt2", data), settings, spec, out, progress=False).to_dict()


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A two-generation search on a copy of the data, in a place about to be left."""
    first = tmp_path_factory.mktemp("first")
    data = copy_data(data_dir, first / "data")
    return data, first / "run", search(data, first / "run", 2)


def move(finished, to: Path) -> tuple[str, Path]:
    data, out, _ = finished
    shutil.copytree(Path(data), to / "moved-data")
    shutil.copytree(out, to / "moved-run")
    return str(to / "moved-data"), to / "moved-run"


def test_a_search_moved_with_its_data_reads_back_and_resumes(finished, tmp_path, capsys):
    data, out = move(finished, tmp_path)
    assert (out / data_identity.RECORD).is_file()
    capsys.readouterr()
    assert search(data, out, 2) == finished[2]  # the same search: read back
    assert "not recomputed" in capsys.readouterr().err
    longer = search(data, out, 3)  # a larger budget resumes from the moved checkpoint
    assert longer["config"]["data"] == finished[2]["config"]["data"] and longer["config"]["generations"] == 3
    assert [row["generation"] for row in read_csv(out / "history.csv")] == [0, 1, 2]
    assert longer["spent"]["evaluations"] > finished[2]["spent"]["evaluations"]


def test_an_unrecorded_finished_search_is_known_by_its_provenance(finished, tmp_path):
    data, out = move(finished, tmp_path)
    (out / data_identity.RECORD).unlink()
    assert search(data, out, 2) == finished[2]


def test_another_text_is_refused_naming_the_file(finished, tmp_path):
    data, out = move(finished, tmp_path)
    test_file = Path(data) / "wikitext-2-raw" / "test.txt"
    test_file.write_text(test_file.read_text() + "\n one more line\n")
    with pytest.raises(EvopruneError, match=f"{test_file} is not the text of .*test.txt"):
        search(data, out, 2)


def test_a_record_left_without_a_checkpoint_describes_no_search(finished, tmp_path):
    data, out = move(finished, tmp_path)
    for name in (CHECKPOINT, "result.json", "history.csv"):
        (out / name).unlink(missing_ok=True)
    assert data_identity.saved_identity(out) is None and not (out / data_identity.RECORD).exists()


def test_data_named_not_given_by_path_has_no_fingerprint():
    assert data_identity.fingerprint("wikitext2", ["test"]) is None
    assert data_identity.fingerprint("python-docs", ["test"]) is None
