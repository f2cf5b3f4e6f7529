"""Property-based fuzzing of every public op (cases in fuzz_cases.py, child in fuzz_runner.py).

The cases run in a child process: a segfault, an abort or a sanitizer report
kills only the child, and the parent names the op and the exact spec that was
running (the child writes each spec to a file before running it), then resumes
the remaining ops in a fresh child.

Profiles
--------
ci (default)
    ``SOFTDEC_FUZZ_EXAMPLES`` examples per op (default 150), derandomized (the same
    examples every run), about a minute for the whole file on 2 cores.
long
    ``SOFTDEC_FUZZ_PROFILE=long SOFTDEC_FUZZ_MINUTES=10`` (``make fuzz``): random
    seeds, batches of 200 examples per op until the time budget (split evenly
    over the ops) is spent. Tests marked ``fuzz_long``; skipped otherwise.

A failure prints the op, the falsifying spec (shrunk by hypothesis) and how to
rerun it; a crash prints the spec that was running and the child's stderr tail.
``SOFTDEC_FUZZ_REPORT=path`` appends one JSON line per op (examples, seconds).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import softdec

pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (make setup installs it)")
import fuzz_cases  # noqa: E402

HERE = Path(__file__).resolve().parent
OPS = sorted(fuzz_cases.CASES)
PROFILE = os.environ.get("SOFTDEC_FUZZ_PROFILE", "ci")
CI_EXAMPLES = int(os.environ.get("SOFTDEC_FUZZ_EXAMPLES", "150"))
MINUTES = float(os.environ.get("SOFTDEC_FUZZ_MINUTES", "10"))


def _child(ops, examples, tmp, seed=None, shrink=True, extra_env=None, timeout=900):
    """Run the ops in child processes until each has a result; crashes are attributed.

    Returns {op: {"examples", "error", "seconds", "crash"}}.
    """
    last, res = tmp / "last.json", tmp / "results.json"
    results, todo = {}, list(ops)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), *sys.path] if p)
    env.update(extra_env or {})
    while todo:
        for f in (last, res):
            if f.exists():
                f.unlink()
        cmd = [sys.executable, str(HERE / "fuzz_runner.py"), "--ops", ",".join(todo), "--examples", str(examples),
               "--last", str(last), "--results", str(res)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        if not shrink:
            cmd.append("--no-shrink")
        p = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
        got = json.loads(res.read_text()) if res.exists() else {}
        results.update({op: dict(r, crash=None) for op, r in got.items()})
        todo = [op for op in todo if op not in got]
        if p.returncode != 0 or todo:
            running = json.loads(last.read_text()) if last.exists() else None
            op = running["op"] if running else (todo[0] if todo else "?")
            tail = (p.stdout + p.stderr)[-4000:]
            results[op] = {"examples": None, "seconds": None, "error": None,
                           "crash": f"child exited with {p.returncode} while running op {op!r} on spec\n"
                                    f"{json.dumps(running and running['spec'], indent=1, default=repr)}\n"
                                    f"rerun: cd tests && python -c \"import fuzz_cases, json; "
                                    f"fuzz_cases.run(json.load(open('{last}'))['spec'])\"\n"
                                    f"--- child output (tail) ---\n{tail}"}
            todo = [o for o in todo if o != op]
    return results


def _report(op, r, profile):
    path = os.environ.get("SOFTDEC_FUZZ_REPORT")
    line = dict(op=op, profile=profile, examples=r.get("examples"), seconds=r.get("seconds"),
                failed=bool(r.get("error") or r.get("crash")))
    print(f"fuzz {profile} {op}: {line['examples']} examples in {line['seconds']} s")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _fail_text(op, r):
    if r.get("crash"):
        return f"fuzz crash in {op}:\n{r['crash']}"
    return f"fuzz failure in {op} ({r['examples']} examples):\n{r['error']}"


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory):
    return _child(OPS, CI_EXAMPLES, tmp_path_factory.mktemp("fuzz"))


@pytest.mark.skipif(PROFILE != "ci", reason="SOFTDEC_FUZZ_PROFILE selects the long profile")
@pytest.mark.parametrize("op", OPS)
def test_fuzz(op, ci_results):
    r = ci_results[op]
    _report(op, r, "ci")
    if r.get("error") or r.get("crash"):
        pytest.fail(_fail_text(op, r), pytrace=False)
    assert r["examples"] >= min(CI_EXAMPLES, 10), f"{op}: only {r['examples']} examples ran"


@pytest.mark.fuzz_long
@pytest.mark.skipif(PROFILE != "long", reason="long fuzzing: SOFTDEC_FUZZ_PROFILE=long (make fuzz)")
@pytest.mark.parametrize("op", OPS)
def test_fuzz_long(op, tmp_path):
    budget = MINUTES * 60 / len(OPS)
    t0, total, seeds = time.monotonic(), 0, []
    while time.monotonic() - t0 < budget:
        s = random.randrange(2 ** 32)
        seeds.append(s)
        r = _child([op], 200, tmp_path, seed=s)[op]
        if r.get("error") or r.get("crash"):
            _report(op, dict(r, examples=total), "long")
            pytest.fail(_fail_text(op, r) + f"\n(hypothesis seed {s}: fuzz_runner.py --ops {op} --seed {s})",
                        pytrace=False)
        total += r["examples"]
    _report(op, {"examples": total, "seconds": round(time.monotonic() - t0, 1)}, "long")


def test_every_public_op_is_fuzzed():
    public = set(softdec.__all__) - fuzz_cases.NOT_OPS
    assert public <= fuzz_cases.COVERED, f"public ops without a fuzz case: {sorted(public - fuzz_cases.COVERED)}"


def test_crash_is_attributed_to_its_spec(tmp_path):
    # the runner's crash path: a case that aborts the child on one spec must be
    # reported with that op and spec, and the ops after it must still run
    r = _child(["_selftest_crash", "philox_uniform"], 20, tmp_path, extra_env={"SOFTDEC_FUZZ_SELFTEST": "1"})
    crash = r["_selftest_crash"]["crash"]
    assert crash is not None and "'_selftest_crash'" in crash and '"boom": 3' in crash
    assert r["philox_uniform"]["error"] is None and r["philox_uniform"]["examples"] >= 10


def test_failure_names_the_violated_invariant(tmp_path):
    r = _child(["_selftest_fail"], 20, tmp_path, extra_env={"SOFTDEC_FUZZ_SELFTEST": "1"})["_selftest_fail"]
    assert r["crash"] is None
    assert "Violation: selftest invariant" in r["error"]
    assert "Failing test case" in r["error"] or "Falsifying example" in r["error"]
    assert "'boom': 2" in r["error"]  # shrunk to the smallest failing value


# ---- kernel-side issues of issue 14 (the csrc/ half), fixed: their reproducers (the fuzz
# invariants check these inputs too).

def test_known_gumbel_hard_invalid_row_is_zero():
    import torch
    y = softdec.gumbel_softmax(torch.full((1, 5), float("nan")), hard=True, seed=0)
    assert torch.equal(y, torch.zeros(1, 5))


@pytest.mark.parametrize("op", ["top_p_renorm_probs", "min_p_renorm_probs"])
def test_known_subnormal_row_renormalises(op):
    import torch
    p = torch.tensor([[3e-42, 1e-42, 2e-42]])
    out = getattr(softdec, op)(p, 1.0 if op == "top_p_renorm_probs" else 0.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5, rtol=0)
