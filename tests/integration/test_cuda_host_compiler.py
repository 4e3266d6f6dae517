"""cuda_toolkit warns where nvcc will refuse the host's GCC (CUDA 12.8 takes up to GCC 14; Fedora 42's is 15), naming
the ways out, and says nothing where the GCC fits or the release is not judged. The gcc is a script printing a
version (this machine's own is another); the role's tasks run for real, one case a host of one run."""
from __future__ import annotations

import pytest
from llm_fixture import Cases, run_cases

CASES = {"fedora42-gcc15": ("12.8", "15.1.1"), "gcc14": ("12.8", "14.2.1"), "cuda13-gcc15": ("13.0", "15.1.1")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    work = tmp_path_factory.mktemp("cuda-gcc")
    cases = {}
    for name, (cuda, gcc) in CASES.items():
        bindir = work / name
        bindir.mkdir()
        (bindir / "gcc").write_text(f"#!/bin/sh\necho {gcc}\n")
        (bindir / "gcc").chmod(0o755)
        cases[name] = {"cuda_toolkit_version": cuda, "fake_gcc_dir": str(bindir)}
    return run_cases(work, "cuda_host_compiler.yml", cases)


def test_a_gcc_newer_than_the_release_takes_is_pointed_out_with_the_ways_out(runs: Cases) -> None:
    assert runs.rc == 0 and not runs.failed, runs.output[-3000:]
    out = " ".join(runs.hosts["fedora42-gcc15"].split())
    assert ("[WARNING]: fedora42-gcc15: CUDA 12.8's nvcc accepts GCC up to 14 as host compiler; this host's gcc is "
            "15.1.1") in out, out[-2000:]
    assert "dnf install gcc14 gcc14-c++" in out and "-ccbin g++-14" in out and "-allow-unsupported-compiler" in out


@pytest.mark.parametrize("case", ["gcc14", "cuda13-gcc15"])
def test_a_gcc_that_fits_or_a_release_not_judged_gets_no_warning(runs: Cases, case: str) -> None:
    assert "accepts GCC up to" not in runs.hosts[case]
    assert "A GCC newer than this CUDA release accepts is pointed out" in runs.output
