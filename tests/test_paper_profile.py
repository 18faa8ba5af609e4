"""The paper profile, dry run: every notebook with params/paper.yaml's settings end to end, the hub replaced by a
GPT-2-architecture model directory saved here (4 blocks, a byte-level BPE tokenizer trained on the local WikiText
copy) and the local WikiText copy; generations and windows reduced, everything else as published (float32
fitness, the population sizes, the run that scores on test). Every path of the published setting but the
download runs."""
import pytest

from evoprune.notebook import load_profile, run_notebook
from evoprune.records import read_json, report_paths, ROOT
from evoprune.schema import validate_summary

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, data_dir):
    """A random-weight GPT-2 (the paper's architecture and 1024 positions, 4 small blocks) with a 512-token
    byte-level BPE, saved as a Hugging Face model directory."""
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    out = tmp_path_factory.mktemp("gpt2-dry-run")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    text = (Path(data_dir) / "wikitext-2" / "valid.txt").read_text()[:200_000]
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=512, special_tokens=[EOT], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=4, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def dry_run_overrides(model_dir, data_dir) -> dict:
    """The paper profile's settings with the model, data and downstream tasks local and the budgets cut."""
    search = load_profile("paper")["03_ga_search"]
    runs = {name: {**run, "generations": 2, **({} if run["strategy"] == "race" else {"fitness_windows": 2})}
            for name, run in search["runs"].items()}
    second = load_profile("paper")["05_methods"]
    overrides = {"model": str(model_dir), "data": data_dir, "test_windows": 2, "sensitivity_windows": 2, "runs": runs,
                 "race": {**second["race"], "generations": 2}, "docs_windows": 2,
                 "race_seeds": {criterion: [0] for criterion in second["race_seeds"]}}
    if search.get("downstream_tasks"):  # the hub's tasks; the local last-word task takes the same path
        overrides |= {"downstream_tasks": ["wikitext_lastword"], "downstream_limit": 8}
    return overrides


@pytest.mark.slow
def test_paper_profile_dry_run(gpt2_dir, data_dir, tmp_path):
    overrides = dry_run_overrides(gpt2_dir, data_dir)
    for path in NOTEBOOKS:
        run_notebook(path, "paper", tmp_path, overrides)

    paths = report_paths("paper", tmp_path)
    summary = validate_summary(read_json(paths.summary))
    assert summary["profile"] == "paper" and summary["model"] == str(gpt2_dir)
    published_runs = load_profile("paper")["03_ga_search"]["runs"]
    assert [g["run"] for g in summary["ga"]] == list(published_runs)
    ran = read_json(paths.timings)
    assert list(ran) == [p.stem for p in NOTEBOOKS]
    assert ran["01_baseline"]["parameters"]["dtype"] == "float32"  # the rest of the setting is the paper's
    for name, run in ran["03_ga_search"]["parameters"]["runs"].items():
        cut = {"generations": 2, **({} if run["strategy"] == "race" else {"fitness_windows": 2})}
        assert run == {**published_runs[name], **cut}
    for figure in ("figure1", "figure2_layer_profile", "figure3_block_removal"):
        assert paths.figure(figure).read_bytes()[:4] == b"\x89PNG", figure
