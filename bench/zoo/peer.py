"""Times one peer engine on one exported zoo model, in a process of its own
(called by `kiln-bench --zoo`; see bench/zoo/export.py for MODEL_DIR).

    python bench/zoo/peer.py ENGINE MODEL_DIR THREADS SECONDS OUT_JSON

ENGINE is `ort` (ONNX Runtime's CPU provider: intra-op THREADS threads, one
inter-op thread, every graph optimization) or `tract` (tract's Python
bindings: load, into_model, into_runnable, which optimizes; they have no
thread setting, so tract runs on one thread whatever THREADS says, and the
JSON says so). Measures session creation plus the first run ("compile +
first run"), runs 3 warm-ups, then times runs for SECONDS (at least 10):
median and p90 in ms. Writes the first run's outputs as
MODEL_DIR/<engine>_out_<k>.npy and the result as JSON to OUT_JSON (and
stdout), with the process's peak RSS (ru_maxrss, KiB). An error is written
as {"ok": false, "error": ...} and exits 1.
"""
import json
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

WARMUP = 3
MIN_RUNS = 10
MAX_RUNS = 100_000


def load_inputs(d):
    meta = json.loads((d / "meta.json").read_text())
    return meta, [(i["name"], np.load(d / i["file"])) for i in meta["inputs"]]


def ort_engine(path, inputs, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = dict(inputs)

    def run():
        return sess.run(None, feeds)

    return run, {"version": ort.__version__, "threads": threads}


def tract_engine(path, inputs, threads):
    import tract

    onnx = tract.onnx()
    if hasattr(onnx, "load"):
        model = onnx.load(str(path)).into_model().into_runnable()
    else:  # the bindings before 0.22
        model = onnx.model_for_path(str(path)).into_optimized().into_runnable()
    arrays = [a for _, a in inputs]

    def run():
        return [t.to_numpy() for t in model.run(arrays)]

    return run, {"version": tract.version(), "threads": 1, "note": "tract's Python bindings have no thread setting: one thread"}


ENGINES = {"ort": ort_engine, "tract": tract_engine}


def main():
    if len(sys.argv) != 6 or sys.argv[1] not in ENGINES:
        sys.exit(__doc__)
    engine, d, threads, seconds, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
    result = {"engine": engine, "dir": str(d), "threads_asked": threads}
    try:
        _, inputs = load_inputs(d)
        t0 = time.perf_counter()
        run, info = ENGINES[engine](d / "model.onnx", inputs, threads)
        t_session = time.perf_counter()
        outs = run()
        t_first = time.perf_counter()
        for k, o in enumerate(outs):
            np.save(d / f"{engine}_out_{k}.npy", np.asarray(o))
        for _ in range(WARMUP):
            run()
        times = []
        start = time.perf_counter()
        while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() - start < seconds):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        pick = lambda p: times[round((len(times) - 1) * p)]  # noqa: E731
        result.update(
            ok=True,
            median_ms=pick(0.5),
            p90_ms=pick(0.9),
            runs=len(times),
            session_ms=(t_session - t0) * 1e3,
            first_run_ms=(t_first - t_session) * 1e3,
            compile_first_ms=(t_first - t0) * 1e3,
            outputs=len(outs),
            **info,
        )
    except Exception as e:  # noqa: BLE001 - reported in the table
        traceback.print_exc()
        result.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    result["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    text = json.dumps(result)
    out.write_text(text)
    print(text)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
