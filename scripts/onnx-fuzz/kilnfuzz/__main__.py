"""Command line of the fuzzer: runs mutants over worker processes, prints a
per-family table and writes summary.json; also writes the expected-divergences
document and the regression cases.

    python -m kilnfuzz [--seed N] [--mutants N | --seconds S] [--families a,b]
                       [--jobs J] [--out DIR] [--only K|sS-mK] [--runner PATH]
    python -m kilnfuzz --divergences-md [--check]
    python -m kilnfuzz --write-regressions DIR

Exit status 1 when any mutant crashed, hung, panicked, was refused or
mismatched without an expected divergence explaining it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_mod
import re
import sys
import tempfile
import time

from .fuzz import FAILURES, OUTCOMES, family_names, mutant_id, run_mutant

DEFAULT_RUNNER = "target/release/kiln-onnx-runner"


def worker(w: int, jobs: int, a: dict, names: list[str], queue, first: int | None = None) -> None:
    """Worker w: mutants k with k % jobs == w (the result of a mutant does not
    depend on which worker runs it), from mutant `first` on when given (a
    worker restarted after a crash of ONNX Runtime or onnx in its process).
    Before each mutant it sends ("start", w, k), so that the parent knows
    which mutant a worker that dies was running."""
    from .runner import Runner
    out = a["out"]
    runner = None if a["no_kiln"] else Runner(
        os.path.abspath(a["runner"]), os.path.join(out, f"runner-{w}.stderr"), a["timeout"])
    deadline = time.monotonic() + a["seconds"] if a["seconds"] else None
    with tempfile.TemporaryDirectory(prefix=f"kilnfuzz-{w}-") as work:
        try:
            if a["only"] is not None:
                ks = iter([a["only"]] if w == 0 else [])
            else:
                k0 = a["start"] + w if first is None else first
                ks = iter(range(k0, a["start"] + a["mutants"], jobs)) if a["mutants"] \
                    else (k0 + jobs * i for i in range(1 << 62))
            for k in ks:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                queue.put(("start", w, k))
                queue.put(run_mutant(a["seed"], k, names, runner, work, out))
        finally:
            if runner is not None:
                runner.close()
            queue.put(("done", w))


def table(stats: dict, divs: dict, fam_divs: dict | None = None) -> str:
    """The per-family table (every outcome, and `compared`: the mutants
    both ORT and kiln ran), then the explained count of each expected
    divergence, in total and per family."""
    cols = ["generated"] + list(OUTCOMES[:2]) + ["compared"] + list(OUTCOMES[2:])
    short = {"generated": "gen", "checker_invalid": "invalid", "ort_rejected": "ort_rej",
             "compared": "compared", "agree": "agree", "explained": "explnd",
             "mismatch": "mismatch", "refused": "refused", "crash": "crash", "hang": "hang",
             "panic": "panic", "gen_error": "gen_err"}
    w = max(len(f) for f in list(stats) + ["family"])
    lines = ["family".ljust(w) + "".join(short[c].rjust(9) for c in cols)]
    for fam, st in list(stats.items()):
        lines.append(fam.ljust(w) + "".join(str(st.get(c, 0)).rjust(9) for c in cols))
    if divs:
        lines.append("")
        lines.append("explained, per expected divergence:")
        for d, n in sorted(divs.items()):
            per = ", ".join(f"{f} {fd[d]}" for f, fd in (fam_divs or {}).items() if fd.get(d))
            lines.append(f"  {d}: {n}" + (f" ({per})" if per else ""))
    return "\n".join(lines)


def parse_only(s: str, seed: int) -> tuple[int, int]:
    m = re.fullmatch(r"s(\d+)-m(\d+)", s)
    if m:
        return int(m.group(1)), int(m.group(2))
    if s.isdigit():
        return seed, int(s)
    raise SystemExit(f"--only: expected a mutant index or an id like s7-m1234, got {s!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kilnfuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mutants", type=int, help="number of mutants (default 200)")
    g.add_argument("--seconds", type=float, help="run for this long instead")
    p.add_argument("--start", type=int, default=0, help="first mutant index")
    p.add_argument("--only", help="run one mutant: its index, or an id like s7-m1234")
    p.add_argument("--families", help="comma-separated family names (default: all)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="target/onnx-fuzz")
    p.add_argument("--runner", default=DEFAULT_RUNNER, help="the kiln-onnx-runner binary")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per kiln request")
    p.add_argument("--no-kiln", action="store_true",
                   help="generate and run ONNX Runtime only (checks the generators)")
    p.add_argument("--list-families", action="store_true")
    p.add_argument("--divergences-md", action="store_true",
                   help="print DIVERGENCES.md (with --check: fail if the file differs)")
    p.add_argument("--check", action="store_true")
    p.add_argument("--write-regressions", metavar="DIR")
    p.add_argument("--explain", metavar="CASE_DIR", nargs="+",
                   help="re-check saved repro dirs (with kiln_output_<i>.npy) against the "
                        "expected divergences and print what each predicate says")
    a = p.parse_args(argv)

    if a.explain:
        from .divergences import explain_dir
        for d in a.explain:
            print(explain_dir(d))
        return 0

    if a.divergences_md:
        from .divergences import markdown
        text = markdown()
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "DIVERGENCES.md")
        if a.check:
            try:
                with open(path) as f:
                    current = f.read()
            except OSError:
                current = None
            if current != text:
                print(f"{path} is out of date: regenerate it with "
                      "`python -m kilnfuzz --divergences-md > scripts/onnx-fuzz/DIVERGENCES.md`",
                      file=sys.stderr)
                return 1
            print(f"{path} is up to date")
            return 0
        sys.stdout.write(text)
        return 0
    if a.write_regressions:
        from .regressions import write_all
        for path in write_all(a.write_regressions):
            print(path)
        return 0
    names = family_names(a.families.split(",") if a.families else None)
    if a.list_families:
        print("\n".join(names))
        return 0
    if a.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    only = None
    if a.only is not None:
        a.seed, only = parse_only(a.only, a.seed)
    if not a.no_kiln and not os.path.isfile(a.runner):
        raise SystemExit(f"{a.runner} not found: build it with "
                         "`cargo build --release -p kiln-tests --bin kiln-onnx-runner`")
    mutants = a.mutants if a.mutants is not None else (None if a.seconds else 200)
    os.makedirs(a.out, exist_ok=True)
    cfg = dict(out=os.path.abspath(a.out), runner=a.runner, timeout=a.timeout, no_kiln=a.no_kiln,
               seconds=a.seconds, mutants=mutants, start=a.start, seed=a.seed, only=only)
    jobs = 1 if only is not None else a.jobs
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(w, jobs, cfg, names, queue), daemon=True) for w in range(jobs)]
    t0 = time.monotonic()
    for pr in procs:
        pr.start()
    started: dict[int, int] = {}
    finished: set[int] = set()
    oracle_aborts: list[str] = []
    stats = {n: {"generated": 0} for n in names}
    divs: dict[str, int] = {}
    fam_divs: dict[str, dict[str, int]] = {n: {} for n in names}
    failures = []
    done, running, last = 0, jobs, t0
    while running:
        try:
            r = queue.get(timeout=2.0)
        except queue_mod.Empty:
            # A worker killed by ONNX Runtime or onnx (a C++ assertion
            # aborts the whole process): its mutant counts as refused by
            # the oracle, and a new worker goes on from the next one.
            for w, pr in enumerate(procs):
                if w in finished or pr.is_alive():
                    continue
                if not queue.empty():
                    break  # drain what it sent before looking again
                k = started.get(w)
                if k is None:
                    finished.add(w)
                    running -= 1
                    continue
                mid = mutant_id(a.seed, k)
                oracle_aborts.append(mid)
                print(f"NOTE {mid}: its worker died (exit {pr.exitcode}) outside kiln "
                      "(ONNX Runtime or onnx aborted); counted as ort_rejected", flush=True)
                r = {"id": mid, "family": names[k % len(names)], "outcome": "ort_rejected",
                     "detail": f"the process running ONNX Runtime died (exit {pr.exitcode})"}
                st = stats[r["family"]]
                st["generated"] += 1
                st["ort_rejected"] = st.get("ort_rejected", 0) + 1
                done += 1
                started.pop(w)
                procs[w] = ctx.Process(target=worker, args=(w, jobs, cfg, names, queue, k + jobs),
                                       daemon=True)
                procs[w].start()
            continue
        if isinstance(r, tuple):
            if r[0] == "start":
                started[r[1]] = r[2]
            else:
                finished.add(r[1])
                started.pop(r[1], None)
                running -= 1
            continue
        for w, k in list(started.items()):
            if mutant_id(a.seed, k) == r["id"]:
                del started[w]
        st = stats[r["family"]]
        st["generated"] += 1
        st[r["outcome"]] = st.get(r["outcome"], 0) + 1
        if r["outcome"] == "explained":
            divs[r["divergence"]] = divs.get(r["divergence"], 0) + 1
            fd = fam_divs[r["family"]]
            fd[r["divergence"]] = fd.get(r["divergence"], 0) + 1
        if r["outcome"] in FAILURES:
            failures.append(r)
            print(f"{r['outcome'].upper()} {r['id']} {r['family']}: {r.get('detail', '')}"
                  + (f" [{r['arbiter']}]" if r.get("arbiter") else "")
                  + (f"\n  repro: {os.path.relpath(r['repro'])}" if r.get("repro") else ""), flush=True)
        done += 1
        if only is not None and r["outcome"] not in FAILURES:
            print(f"{r['id']} {r['family']}: {r['outcome']}"
                  + (f" ({r['divergence']})" if r.get("divergence") else "")
                  + (f": {r['detail']}" if r.get("detail") else ""))
        if time.monotonic() - last > 30:
            last = time.monotonic()
            print(f"... {done} mutants, {done / (last - t0):.1f}/s", file=sys.stderr, flush=True)
    for pr in procs:
        pr.join()
    elapsed = time.monotonic() - t0
    totals = {"generated": 0}
    for st in stats.values():
        for c, n in st.items():
            totals[c] = totals.get(c, 0) + n
    for n in names:
        stats[n]["compared"] = sum(stats[n].get(c, 0) for c in ("agree", "explained", "mismatch"))
        stats[n]["explained_by"] = fam_divs[n]
    totals["compared"] = sum(totals.get(c, 0) for c in ("agree", "explained", "mismatch"))
    shown = dict(stats)
    shown["TOTAL"] = totals
    print(table({k: v for k, v in shown.items() if v["generated"] or k == "TOTAL"}, divs, fam_divs))
    for fam, st in shown.items():
        counted = sum(st.get(c, 0) for c in OUTCOMES)
        if counted != st["generated"]:
            print(f"WARNING: {fam}: outcomes add up to {counted}, {st['generated']} generated")
    rate = done / elapsed if elapsed else 0.0
    print(f"{done} mutants in {elapsed:.1f} s ({rate:.2f}/s, {jobs} jobs), seed {a.seed}")
    summary = {"seed": a.seed, "jobs": jobs, "mutants": done, "seconds": round(elapsed, 2),
               "mutants_per_second": round(rate, 3), "families": stats, "totals": totals,
               "explained": divs, "failures": failures, "oracle_aborts": oracle_aborts}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    nfail = sum(totals.get(c, 0) for c in FAILURES)
    if nfail:
        print(f"FAIL: {nfail} failing mutants; repros under {os.path.join(a.out, 'cases')}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
