import json

import pytest

from evoprune.cli import main


def run_eval(capsys, *args):
    code = main(["eval", "--model", "tiny-gpt2", "--seq-len", "256", "--max-windows", "2", "--json", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_prints_one_json_object(capsys, data_dir, tmp_path):
    code, out, _ = run_eval(capsys, "--data", data_dir, "--rates", "0.45", "--out", str(tmp_path / "r.json"))
    assert code == 0
    result = json.loads(out)
    for key in ("ppl", "n_windows", "n_tokens", "block_sparsity", "model_sparsity", "seconds", "provenance"):
        assert key in result
    assert result["n_windows"] == 2 and result["n_tokens"] == 2 * 255
    assert result["block_sparsity"] == pytest.approx(0.45, abs=1e-4)
    assert result["provenance"]["data"]["text_sha256"]
    assert json.loads((tmp_path / "r.json").read_text())["ppl"] == result["ppl"]


def test_eval_accepts_a_genome_file(capsys, data_dir, tmp_path):
    genome = tmp_path / "g.json"
    genome.write_text(json.dumps({"genome": [0.1 * (i % 6) for i in range(12)]}))
    code, out, _ = run_eval(capsys, "--data", data_dir, "--rates", str(genome))
    assert code == 0 and json.loads(out)["genome"][5] == pytest.approx(0.5)


@pytest.mark.parametrize("args, message", [
    (["--rates", "0.5,0.5"], "2 entries but this model needs 12"),
    (["--rates", "1.5"], "must be a number in"),
    (["--rates", "nan"], "must be a number in"),
    (["--rates", "abc"], "not a number"),
    (["--criterion", "bogus"], "unknown criterion"),
    (["--dtype", "float8"], "unknown dtype"),
    (["--protocol", "bogus"], "unknown protocol"),
])
def test_bad_input_exits_nonzero_and_writes_nothing(capsys, data_dir, tmp_path, args, message):
    out_file = tmp_path / "r.json"
    code, out, err = run_eval(capsys, "--data", data_dir, "--out", str(out_file), *args)
    assert code == 2 and message in err and out == ""
    assert not out_file.exists()


def test_missing_data_directory(capsys, tmp_path):
    code, _, err = run_eval(capsys, "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err and "EVOPRUNE_DATA_DIR" in err


def test_unknown_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "--model", "no-such-org/no-such-model", "--data", str(tmp_path)])
    assert code == 2 and "not cached" in capsys.readouterr().err


def test_paper_profile_offline_names_the_offline_profile(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["check", "--profile", "paper"])
    err = capsys.readouterr().err
    assert code == 2 and "PROFILE=offline" in err and "EVOPRUNE_DATA_DIR" in err


def test_make_reproduce_unknown_profile_fails_clearly():
    import subprocess
    from evoprune.records import ROOT
    run = subprocess.run(["make", "-s", "reproduce", "PROFILE=nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "unknown profile 'nonexistent'" in run.stderr


def test_second_text_is_held_out_only(capsys):
    code = main(["eval", "--model", "tiny-gpt2", "--data", "python-docs", "--seq-len", "256", "--max-windows", "1",
                 "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["provenance"]["data"]["source"].startswith("python-docs")
    assert main(["eval", "--model", "tiny-gpt2", "--data", "python-docs", "--split", "validation"]) == 2


def test_export_writes_a_model_that_reloads_to_the_same_logits(capsys, data_dir, tmp_path):
    import argparse

    import torch
    from transformers import AutoModelForCausalLM

    from evoprune.cli import pruned_model
    args = ["--model", "tiny-gpt2", "--data", data_dir, "--seq-len", "256", "--rates", "0.5", "--criterion", "wanda",
            "--remove-blocks", "2,5"]
    assert main(["export", *args, "--out", str(tmp_path / "m")]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["nonzero_parameters"] < saved["parameters"] and saved["removed_blocks"] == [2, 5]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert reloaded.config.n_layer == 10
    namespace = argparse.Namespace(model="tiny-gpt2", data=data_dir, seq_len=256, rates="0.5", criterion="wanda",
                                   remove_blocks="2,5")
    _, pruner = pruned_model(namespace)
    ids = torch.arange(64).view(1, -1)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruner.model(ids).logits)


@pytest.mark.parametrize("blocks, message", [
    ("a,b", "block indices"),
    (",".join(map(str, range(12))), "cannot remove all"),
    ("12", "must be in 0..11"),
])
def test_export_refuses_bad_block_lists(capsys, data_dir, tmp_path, blocks, message):
    code = main(["export", "--model", "tiny-gpt2", "--data", data_dir, "--remove-blocks", blocks,
                 "--out", str(tmp_path / "m")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, message", [
    (["--max-windows", "0"], "--max-windows 0: give at least 1 window"),
    (["--seq-len", "99999"], "--seq-len 99999: give 2 to 1024 tokens"),
])
def test_eval_window_settings_name_the_fix(capsys, data_dir, args, message):
    code = main(["eval", "--model", "tiny-gpt2", "--data", data_dir, "--json", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_export_to_an_unwritable_place_names_the_fix(capsys, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    for out in ("/proc/forbidden", str(blocked / "m")):
        code = main(["export", "--model", "tiny-gpt2", "--data", str(tmp_path), "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and f"--out {out} cannot be created" in err and len(err.strip().splitlines()) == 1
