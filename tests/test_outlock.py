"""One run per output directory: a second search on a busy --out is refused, and the lock dies with its holder."""
import subprocess
import sys

import pytest

from evoprune import EvopruneError, outlock
from evoprune.cli import main
from evoprune.records import ROOT

HOLDER = """
import sys, time
from evoprune import outlock
with outlock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_directory_is_refused_in_process(tmp_path):
    with outlock.hold(tmp_path / "out"):
        with pytest.raises(EvopruneError, match="in use by another run"):
            with outlock.hold(tmp_path / "out"):
                pass
    with outlock.hold(tmp_path / "out"):  # free again afterwards
        pass


def test_a_second_search_on_a_busy_out_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(ROOT / "lib"), "PATH": ""})
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["search", "--model", "tiny-gpt2", "--target", "0.5", "--out", str(out), "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is in use by another run" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()  # killed, not closed: the kernel frees the lock
        holder.wait()
    with outlock.hold(out):
        pass


def test_a_directory_made_for_a_run_that_failed_is_removed_unless_partial_results_are_kept(tmp_path):
    for keep, left in ((False, False), (True, True)):
        out = tmp_path / f"keep-{keep}"
        with pytest.raises(RuntimeError):
            with outlock.hold(out, keep_partial=keep):
                (out / "checkpoint.json").write_text("{}")
                raise RuntimeError("killed")
        assert out.exists() == left
    with outlock.hold(tmp_path / "empty"):
        pass
    assert not (tmp_path / "empty").exists()


def test_a_file_is_not_a_directory_to_hold(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(EvopruneError, match="is a file"):
        with outlock.hold(tmp_path / "f"):
            pass
