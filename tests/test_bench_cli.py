"""`softdec bench`: the benchmark ships inside the package (softdec.bench) and runs from any folder.

The subprocess test runs the CLI from a temporary folder (outside the source tree) against the
softdec that this test session imports (the in-place build or the installed wheel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import softdec
from softdec.bench import harness, runner

PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(softdec.__file__)))


def _run(args, cwd, timeout=240):
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    return subprocess.run([sys.executable, "-m", "softdec", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a fresh interpreter importing torch + one timed row: ~55 s on the shared 2-core machine
def test_bench_quick_one_family_outside_the_source_tree(tmp_path):
    out = tmp_path / "r" / "philox.json"
    p = _run(["--quick", "--only", "philox", "--json", str(out), "--rounds", "1", "--budget", "0.2"],
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    # the table on stdout, one progress line per finished row on stderr
    assert "philox_uniform" in p.stdout and "B=8 V=151936" in p.stdout
    assert "[1/1" in p.stderr and "done in" in p.stderr
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["op"] for r in rows] == ["philox_uniform"]
    assert rows[0]["times"]["softdec"]["median_ms"] > 0 and "torch.rand" in rows[0]["ratios"]
    assert data["environment"]["timing"]["mode"] == "quick"
    assert data["environment"]["softdec"]["version"]


def test_bench_default_results_folder_is_the_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert runner.main(["--quick", "--only", "philox", "--rounds", "1", "--budget", "0.1"]) == 0
    res = list((tmp_path / "softdec-bench-results").glob("bench-*.json"))
    assert len(res) == 1 and json.loads(res[0].read_text())["rows"][0]["op"] == "philox_uniform"
    assert "philox_uniform" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["--only", "nosuchop"], "--only: no benchmark family matches 'nosuchop'"),
    (["--only", ","], "--only: give at least one family name"),
    (["--quick", "--full"], "not allowed with argument"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--budget", "0"], "--budget must be > 0"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--rounds", "x"], "argument --rounds: invalid int value"),
])
def test_bench_argument_errors(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        runner.main(args)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_bench_help_names_the_run_sizes(capsys):
    with pytest.raises(SystemExit) as e:
        runner.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--full", "--only", "--json", "--plot", "--device"):
        assert flag in out


def test_every_bench_module_gives_cases_in_each_size():
    # sizes are nested: quick <= default <= full in rows, per family (no timing: cases are only built)
    names = runner.module_names()
    assert {"bench_philox", "bench_sampling", "bench_verify"} <= set(names)
    mod = runner.discover(["philox"])[0]
    q, d, f = (len(runner.module_cases(mod, quick=qq, full=ff, device="cpu"))
               for qq, ff in ((True, False), (False, False), (False, True)))
    assert 1 <= q <= d <= f
    assert all(isinstance(c, harness.Case) for c in runner.module_cases(mod, quick=True, full=False,
                                                                       device="cpu"))


def test_one_shot_times_a_slow_call_once():
    calls = []
    st = harness.measure(lambda: calls.append(__import__("time").sleep(0.03)), max_time_s=0.01, one_shot=True)
    assert st.reps == 1 and len(calls) == 1 and st.median_ms >= 30


def test_cli_usage_errors(capsys):
    from softdec import cli
    assert cli.main(["nosuchcmd"]) == 2
    assert "unknown command 'nosuchcmd'" in capsys.readouterr().err
