import json

import pytest

from evoprune import EvopruneError, hardware

SLOW_BF16 = {"float32_gflops": 100.0, "bfloat16_gflops": 90.0}
FAST_BF16 = {"float32_gflops": 100.0, "bfloat16_gflops": 300.0}


@pytest.fixture
def cpu_only(monkeypatch):
    """Decide as on a machine without a GPU, whatever this one has."""
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: False)


def counting(figures):
    calls = []

    def probe():
        calls.append(1)
        return dict(figures)
    probe.calls = calls
    return probe


def test_auto_follows_the_probe(cpu_only, tmp_path, capsys):
    assert hardware.resolve_dtype("auto", counting(SLOW_BF16), tmp_path / "slow.json") == "float32"
    assert hardware.resolve_dtype("auto", counting(FAST_BF16), tmp_path / "fast.json") == "bfloat16"
    decision = hardware.dtype_decision()
    assert decision["requested"] == "auto" and decision["dtype"] == "bfloat16"
    assert decision["probe"]["bfloat16_gflops"] == 300.0
    assert decision["fingerprint"] == hardware.fingerprint()
    assert decision["capability"] == decision["fingerprint"]["capability"]
    err = capsys.readouterr().err
    assert "auto -> float32" in err and "auto -> bfloat16" in err


def test_decision_printed_once(cpu_only, tmp_path, capsys):
    for _ in range(3):
        hardware.resolve_dtype("auto", counting({"float32_gflops": 1.0, "bfloat16_gflops": 7.0}), tmp_path / "p.json")
    assert capsys.readouterr().err.count("7.0 GFLOP/s") == 1


def test_probe_cached_per_machine(cpu_only, tmp_path):
    path = tmp_path / "probe.json"
    first = counting(FAST_BF16)
    hardware.resolve_dtype("auto", first, path)
    again = counting(SLOW_BF16)
    assert hardware.resolve_dtype("auto", again, path) == "bfloat16"  # same machine: the cached figures
    assert (len(first.calls), len(again.calls)) == (1, 0)


def test_cache_of_another_machine_not_reused(cpu_only, tmp_path):
    path = tmp_path / "probe.json"
    other = {**hardware.fingerprint(), "cpu": "Some Other CPU", "capability": "DEFAULT"}
    path.write_text(json.dumps({"fingerprint": other, "probe": FAST_BF16}))
    probe = counting(SLOW_BF16)
    assert hardware.resolve_dtype("auto", probe, path) == "float32"
    assert len(probe.calls) == 1
    saved = json.loads(path.read_text())  # overwritten with this machine's figures
    assert saved["fingerprint"] == hardware.fingerprint() and saved["probe"] == SLOW_BF16


def test_explicit_names_pass_through(tmp_path):
    probe = counting(FAST_BF16)
    for name in ("float32", "bfloat16"):
        assert hardware.resolve_dtype(name, probe, tmp_path / "p.json") == name
        assert hardware.dtype_decision()["requested"] == name and hardware.dtype_decision()["probe"] is None
    assert not probe.calls and not (tmp_path / "p.json").exists()


def test_bad_name_errors():
    with pytest.raises(EvopruneError, match="auto, float32, bfloat16"):
        hardware.resolve_dtype("float16")


def test_cuda_decides_without_probe(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware.torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    probe = counting(SLOW_BF16)
    # (native, emulated) support: bf16 only where the GPU runs it natively
    for (native, emulated), expected in (((True, True), "bfloat16"), ((False, False), "float32"),
                                         ((False, True), "float32")):
        monkeypatch.setattr(hardware.torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, n=native, e=emulated: e if including_emulation else n)
        assert hardware.resolve_dtype("auto", probe, tmp_path / "p.json") == expected
    assert not probe.calls


def test_real_probe_is_quick():
    figures = hardware.probe_matmul(shape=(256, 256, 256), repeats=2)
    assert figures["float32_gflops"] > 0 and figures["bfloat16_gflops"] > 0 and figures["wall_s"] < 1


def test_freed_activation_sized_blocks_are_reused_not_faulted_in_again():
    import platform
    import resource

    import torch
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the malloc thresholds are glibc's")
    assert hardware.keep_freed_memory()
    pages = 64 * 2**20 // resource.getpagesize()  # 64 MB: above glibc's default largest heap block (32 MB)

    def faults_of_one_activation() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread touches the pages: the count is the allocator's alone
    try:
        faults = [faults_of_one_activation() for _ in range(16)]  # glibc's defaults: each one faults in anew
        # the first few may still fault while the heap's top settles (trimmed down, then grown to fit the block)
        assert sum(f < pages // 10 for f in faults) >= len(faults) // 2, faults
    finally:
        torch.set_num_threads(threads)
