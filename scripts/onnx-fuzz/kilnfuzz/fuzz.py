"""One mutant end to end: generate, check, run ORT, run kiln, compare,
arbitrate, classify, save a repro when it fails."""
from __future__ import annotations

import os
import shutil
import traceback

import numpy as np
import onnx

from . import oracle
from .cases import effective_tolerance, write_case
from .compare import compare_outputs
from .divergences import Ctx, explain
from .families import FAMILIES
from .mutate import Gen, mutant_seed

#: Outcomes that fail a run.
FAILURES = ("mismatch", "refused", "crash", "hang", "panic", "gen_error")
#: Every outcome, in table order.
OUTCOMES = ("checker_invalid", "ort_rejected", "agree", "explained") + FAILURES


def family_names(selected: list[str] | None) -> list[str]:
    """The families of a run, in the fixed order of FAMILIES."""
    names = list(FAMILIES)
    if selected:
        unknown = [s for s in selected if s not in FAMILIES]
        if unknown:
            raise SystemExit(f"unknown families {unknown}; known: {', '.join(names)}")
        names = [n for n in names if n in selected]
    return names


def mutant_id(seed: int, k: int) -> str:
    return f"s{seed}-m{k}"


def generate(seed: int, k: int, names: list[str]):
    """Mutant k of seed `seed`: (family name, Case)."""
    fam = names[k % len(names)]
    return fam, FAMILIES[fam](Gen(mutant_seed(seed, k)))


def run_mutant(seed: int, k: int, names: list[str], runner, work: str, out: str) -> dict:
    """Runs mutant k; returns {id, family, outcome, divergence?, detail?, repro?}.
    `runner` is a runner.Runner or None (generate and run ORT only)."""
    mid = mutant_id(seed, k)
    res = {"id": mid, "family": names[k % len(names)]}
    try:
        fam, case = generate(seed, k, names)
    except Exception:
        res.update(outcome="gen_error", detail=traceback.format_exc(limit=3).strip().splitlines()[-1])
        return res
    try:
        onnx.checker.check_model(case.model)
    except Exception as e:
        res.update(outcome="checker_invalid", detail=str(e).splitlines()[0][:200])
        return res
    try:
        want = oracle.run_ort(case.model, case.inputs)
    except Exception as e:
        res.update(outcome="ort_rejected", detail=str(e).splitlines()[0][:200])
        return res
    if runner is None:
        res["outcome"] = "agree"
        return res
    d = os.path.join(work, mid)
    os.makedirs(d, exist_ok=True)
    try:
        model_path = os.path.join(d, "model.onnx")
        with open(model_path, "wb") as f:
            f.write(case.model.SerializeToString())
        feeds = {}
        for i, (vi, x) in enumerate(zip(case.model.graph.input, case.inputs)):
            p = os.path.join(d, f"input_{i}.npy")
            np.save(p, x)
            feeds[vi.name] = os.path.abspath(p)
        ans = runner.request({"id": mid, "model": os.path.abspath(model_path), "inputs": feeds,
                              "out_dir": os.path.abspath(os.path.join(d, "out")), "device": "cpu"})
        status = ans.get("status")
        got = None
        if status == "ok":
            try:
                got = [np.load(ans["outputs"][o.name]) for o in case.model.graph.output]
            except Exception as e:
                status, ans = "run_error", {"error": f"unreadable runner output: {e}"}
        ctx = Ctx(case=case, ort=want, kiln=got, kiln_status=status, kiln_error=ans.get("error", ""))
        if status == "ok":
            why = compare_outputs(got, want, case.tol)
            if why is None:
                res["outcome"] = "agree"
                return res
            ctx.why = why
            outcome = "mismatch"
        elif status in ("import_error", "run_error"):
            outcome = "refused"
            ctx.why = f"{status}: {ans.get('error', '')}"
        elif status in ("panic", "crash", "hang"):
            outcome = status
            ctx.why = f"{status}: {ans.get('error', '')}"
        else:
            outcome = "crash"
            ctx.why = f"runner answered status {status!r}: {ans.get('error', '')}"
        try:
            ctx.ref = oracle.run_reference(case.model, case.inputs)
        except Exception as e:
            ctx.ref_error = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if outcome in ("mismatch", "refused"):
            div = explain(ctx, outcome)
            if div is not None:
                res.update(outcome="explained", divergence=div)
                return res
        res.update(outcome=outcome, detail=ctx.why[:300], arbiter=ctx.arbiter())
        rtol, atol = effective_tolerance(case.tol, want)
        res["repro"] = write_case(
            os.path.join(out, "cases", f"{mid}-{fam}-{outcome}"), name=f"{mid}-{fam}-{outcome}",
            family=fam, seed=seed, model=case.model, inputs=case.inputs, expected=want,
            oracle=oracle.ORT_NAME, rtol=rtol, atol=atol,
            what=f"{fam} mutant {k} of seed {seed}: kiln {outcome} against ONNX Runtime",
            extra={"mutant": k, "status": outcome, "detail": ctx.why, "arbiter": ctx.arbiter(),
                   "ops": sorted(case.ops()), "opset": case.opset(),
                   "reproduce": f"scripts/onnx-fuzz.sh --seed {seed} --only {k}"
                                + (f" --families {','.join(names)}" if len(names) != len(FAMILIES) else "")},
            reference=ctx.ref, kiln=ctx.kiln)
        return res
    finally:
        shutil.rmtree(d, ignore_errors=True)
