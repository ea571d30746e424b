"""recsys.runs.machine: the CPU a run ran on, recorded in its manifest, and the note when one run's notebooks ran on two."""

from __future__ import annotations

import json

import pytest

import run_all
from recsys.runs import machine
from tests.notebook_fixtures import make_notebook

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8
"""
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 avx512_vbmi
"""


def test_the_cpu_model_and_the_instruction_sets_its_kernels_use():
    assert machine.cpu_model(INTEL) == "Intel(R) Xeon(R) Platinum 8488C"
    assert machine.cpu_isa(INTEL) == [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]
    # flags outside ISA_FLAGS (avx512_vbmi) are left out; the order is ISA_FLAGS', not the file's
    assert machine.cpu_isa(AMD) == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]
    assert machine.label(AMD) == "AMD EPYC (avx2 fma avx512f avx512_vnni avx512_bf16)"
    assert machine.label(INTEL) != machine.label(AMD)
    described = machine.describe(AMD)
    assert described["cpu_model"] == "AMD EPYC" and described["cpu_isa"][-1] == "avx512_bf16"
    assert described["cpu_count"] >= 1 and described["platform"]


def test_without_cpuinfo_the_label_is_what_platform_knows(tmp_path):
    assert machine.read_cpuinfo(tmp_path / "no-cpuinfo") == ""
    assert machine.cpu_isa("") == []
    assert machine.label("") == machine.cpu_model("") != ""


def test_mixed_cpus_groups_a_runs_notebooks_by_cpu_only_when_there_are_two():
    one = [{"name": "01_a", "cpu": "A"}, {"name": "02_b", "cpu": "A"}, {"name": "03_c"}]  # 03: recorded before CPUs
    assert machine.mixed_cpus(one) == {}
    two = [*one, {"name": "04_d", "cpu": "B"}]
    assert machine.mixed_cpus(two) == {"A": ["01_a", "02_b"], "B": ["04_d"]}


def test_the_manifest_records_the_cpu_and_a_run_on_two_says_so(tmp_path, monkeypatch, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    monkeypatch.setattr(run_all, "NOTEBOOKS_DIR", notebooks)
    make_notebook(notebooks / "01_a.ipynb", "x = 1")
    make_notebook(notebooks / "02_b.ipynb", "y = 2")
    args = ["--artifacts-dir", str(tmp_path / "artifacts"), "--run-name", "r"]
    monkeypatch.setattr(machine, "read_cpuinfo", lambda path=machine.CPUINFO: INTEL)
    assert run_all.main(args) == 0
    manifest = json.loads((tmp_path / "artifacts" / "r" / "manifest.json").read_text())
    assert manifest["cpu_model"] == "Intel(R) Xeon(R) Platinum 8488C" and "amx_tile" in manifest["cpu_isa"]
    assert {entry["cpu"] for entry in manifest["notebooks"]} == {machine.label(INTEL)}
    assert "different CPUs" not in capsys.readouterr().err
    # 02 rerun on another machine: the run now holds notebooks of two CPUs, and says which ran where
    monkeypatch.setattr(machine, "read_cpuinfo", lambda path=machine.CPUINFO: AMD)
    assert run_all.main([*args, "--only", "02"]) == 0
    err = capsys.readouterr().err
    assert "ran on different CPUs" in err
    assert f"01_a: {machine.label(INTEL)}" in err and f"02_b: {machine.label(AMD)}" in err
    index = (tmp_path / "artifacts" / "r" / "reports" / "index.html").read_text()
    # the index page names both CPUs and what each ran, not only the last invocation's
    assert f"CPU {machine.label(AMD)}: 02_b; {machine.label(INTEL)}: 01_a ·" in index
    # run again on one CPU, the page names that CPU alone
    assert run_all.main([*args, "--only", "01"]) == 0 and run_all.main([*args, "--only", "02"]) == 0
    index = (tmp_path / "artifacts" / "r" / "reports" / "index.html").read_text()
    assert "CPU AMD EPYC ·" in index and "Intel" not in index.split("<h2>")[0]


@pytest.mark.parametrize("cpuinfo", [INTEL, AMD])
def test_an_entry_made_by_hand_records_the_cpu_too(cpuinfo, monkeypatch):
    from recsys.runs.provenance import entry_provenance

    monkeypatch.setattr(machine, "read_cpuinfo", lambda path=machine.CPUINFO: cpuinfo)
    assert entry_provenance({}, [], {}, "jupyter", None)["cpu"] == machine.label(cpuinfo)
