"""Unit tests of the fuzzer's own parts (no kiln needed):

    PYTHONPATH=scripts/onnx-fuzz target/onnx-fuzz-venv/bin/python -m unittest \
        discover -s scripts/onnx-fuzz -p 'test_*.py'

the comparison rule, mutant reproducibility, that every family produces
models ONNX Runtime runs, the independent spec transcriptions, the
divergence predicates on hand-made disagreements, that DIVERGENCES.md is up
to date, and that the committed regression cases are what --write-regressions
writes.
"""
from __future__ import annotations

import filecmp
import os
import tempfile
import unittest

import numpy as np
from onnx import helper

from kilnfuzz import truth
from kilnfuzz.compare import Tolerance, compare, compare_outputs
from kilnfuzz.divergences import DIVERGENCES, Ctx, explain, markdown
from kilnfuzz.fuzz import family_names, generate
from kilnfuzz.mutate import Builder, Gen
from kilnfuzz.oracle import run_ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class CompareRule(unittest.TestCase):
    def test_nan_only_where_expected(self):
        w = np.array([np.nan, 1.0], np.float32)
        self.assertIsNone(compare(w.copy(), w, 1e-4, 1e-5))
        self.assertIsNotNone(compare(np.array([0.0, 1.0], np.float32), w, 1e-4, 1e-5))
        self.assertIsNotNone(compare(np.array([np.nan, np.nan], np.float32), w, 1e-4, 1e-5))

    def test_infinities_exact(self):
        w = np.array([np.inf, -1.0], np.float32)
        self.assertIsNotNone(compare(np.array([3e38, -1.0], np.float32), w, 1e-4, 1e-5))
        self.assertIsNotNone(compare(np.array([np.inf, -np.inf], np.float32), w, 1e-4, 1e-5))

    def test_tolerance_bound(self):
        w = np.array([100.0], np.float32)
        self.assertIsNone(compare(np.array([100.0105], np.float32), w, 1e-4, 1e-3))
        self.assertIsNotNone(compare(np.array([100.02], np.float32), w, 1e-4, 1e-3))

    def test_ints_exact_and_dtype_shape(self):
        self.assertIsNotNone(compare(np.array([1], np.int64), np.array([2], np.int64), 1, 1))
        self.assertIsNotNone(compare(np.array([1], np.int32), np.array([1], np.int64), 0, 0))
        self.assertIsNotNone(compare(np.zeros((2, 1)), np.zeros((1, 2)), 0, 0))

    def test_scaled_tolerance(self):
        w = [np.array([1000.0, 0.0], np.float32)]
        g = [np.array([1000.0, 0.05], np.float32)]
        self.assertIsNotNone(compare_outputs(g, w, Tolerance(1e-4, 1e-5)))
        self.assertIsNone(compare_outputs(g, w, Tolerance(1e-4, 1e-5, scaled=True)))


class Mutants(unittest.TestCase):
    def test_reproducible_alone(self):
        names = family_names(None)
        for k in (0, 7, 123, 4567):
            f1, a = generate(11, k, names)
            f2, b = generate(11, k, names)
            self.assertEqual(f1, f2)
            self.assertEqual(a.model.SerializeToString(), b.model.SerializeToString())
            for x, y in zip(a.inputs, b.inputs):
                np.testing.assert_array_equal(x, y)

    def test_every_family_runs_on_ort(self):
        names = family_names(None)
        for fam in names:
            ran = 0
            for k in range(12):
                _, case = generate(5, k * len(names) + names.index(fam), names)
                try:
                    run_ort(case.model, case.inputs)
                    ran += 1
                except Exception:
                    pass
            self.assertGreater(ran, 4, f"{fam}: ORT runs only {ran} of 12 mutants")


class Truth(unittest.TestCase):
    def test_slice_issue_example(self):
        x = np.array([1, 2, 3], np.float32)
        np.testing.assert_array_equal(truth.slice_(x, [-4], [-5], [0], [-1]), [1])

    def test_pool_ceil_past_input(self):
        x = np.arange(10, dtype=np.float32).reshape(1, 1, 2, 5)
        y = truth.pool(x, "max", [3, 3], [2, 2], [1, 1], [0, 0], [0, 0], True)
        np.testing.assert_array_equal(y, [[[[7, 9]]]])

    def test_conv_transpose_matches_ort(self):
        g = Gen(3)
        x, w = g.data([1, 2, 3, 3]), g.data([2, 2, 2, 2])
        b = Builder(g, "t", 17)
        (y,) = b.node("ConvTranspose", [b.input("x", x), b.const("w", w)], strides=[2, 1], pads=[1, 0, 0, 1])
        b.output(y)
        got = run_ort(b.case(sprinkle=False).model, [x])[0]
        want = truth.conv_transpose(x, w, None, [2, 1], [1, 1], [1, 0], [0, 1], [0, 0], 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Divergences(unittest.TestCase):
    def ctx(self, node, inputs, kiln, ort):
        g = Gen(1)
        b = Builder(g, "t", 18)
        names = [b.input(f"x{i}", x) for i, x in enumerate(inputs)]
        (y,) = b.node(node[0], names, **node[1])
        b.output(y)
        case = b.case(sprinkle=False)
        return Ctx(case=case, ort=[np.asarray(ort)], kiln=[np.asarray(kiln)], kiln_status="ok")

    def test_cast_only_out_of_range(self):
        x = np.array([1.5, 1e10, np.nan], np.float32)
        to = int(helper.np_dtype_to_tensor_dtype(np.dtype(np.int32)))
        ok = self.ctx(("Cast", {"to": to}), [x], np.array([1, 2**31 - 1, 0], np.int32),
                      np.array([1, -2**31, -2**31], np.int32))
        self.assertEqual(explain(ok, "mismatch"), "cast_float_to_int_out_of_range")
        bad = self.ctx(("Cast", {"to": to}), [x], np.array([2, 2**31 - 1, 0], np.int32),
                       np.array([1, -2**31, -2**31], np.int32))
        self.assertIsNone(explain(bad, "mismatch"))

    def test_slice_spec_needs_kiln_right(self):
        x = np.array([1, 2, 3], np.float32)
        g = Gen(1)
        b = Builder(g, "t", 13)
        xi = b.input("x", x)
        ins = [xi] + [b.const(n, np.array([v], np.int64)) for n, v in
                      (("s", -4), ("e", -5), ("a", 0), ("t", -1))]
        (y,) = b.node("Slice", ins)
        b.output(y)
        case = b.case(sprinkle=False)
        right = Ctx(case=case, ort=[np.zeros(0, np.float32)], kiln=[np.array([1], np.float32)], kiln_status="ok")
        self.assertEqual(explain(right, "mismatch"), "slice_spec")
        wrong = Ctx(case=case, ort=[np.array([1], np.float32)], kiln=[np.zeros(0, np.float32)], kiln_status="ok")
        self.assertIsNone(explain(wrong, "mismatch"))

    def test_activation_limit_only_at_inf(self):
        x = np.array([np.inf, -np.inf, 1.0], np.float32)
        ort = np.array([np.nan, np.nan, 0.5], np.float32)
        ok = self.ctx(("Softsign", {}), [x], np.array([1.0, -1.0, 0.5], np.float32), ort)
        self.assertEqual(explain(ok, "mismatch"), "activation_limit_at_inf")
        off = self.ctx(("Softsign", {}), [x], np.array([0.9, -1.0, 0.5], np.float32), ort)
        self.assertIsNone(explain(off, "mismatch"))
        finite_too = self.ctx(("Softsign", {}), [x], np.array([1.0, -1.0, 0.4], np.float32), ort)
        self.assertIsNone(explain(finite_too, "mismatch"))

    def model_ctx(self, build, inputs, kiln, ort, opset=18):
        """A Ctx of the graph `build(b, names)` makes over `inputs`."""
        b = Builder(Gen(1), "t", opset)
        names = [b.input(f"x{i}", x) for i, x in enumerate(inputs)]
        for y in build(b, names):
            b.output(y)
        case = b.case(sprinkle=False)
        return Ctx(case=case, ort=[np.asarray(o) for o in ort], kiln=[np.asarray(k) for k in kiln],
                   kiln_status="ok")

    def test_diff_mask_sees_finite_against_inf(self):
        x = np.array([1.0, 2.0], np.float32)
        c = self.ctx(("Relu", {}), [x], np.array([-3e38, 2.0], np.float32),
                     np.array([-np.inf, 2.0], np.float32))
        self.assertEqual(c.diff_mask(0).tolist(), [True, False])

    def test_contraction_overflow_is_float64(self):
        # (q @ k) * 0.5: q @ k overflows f32, kiln folds the scale into k
        q = np.array([[3e38, 1.0]], np.float32)
        k = np.array([[1.5, 1.0], [1.0, 1.0]], np.float32)

        def build(b, names):
            (t,) = b.node("MatMul", names)
            return b.node("Mul", [t, b.const("s", np.array(0.5, np.float32))])
        want = (q.astype(np.float64) @ k.astype(np.float64) * 0.5).astype(np.float32)  # 2.25e38, 1.5e38
        ort = np.array([[np.inf, 1.5e38]], np.float32)
        ok = self.model_ctx(build, [q, k], [want], [ort])
        self.assertEqual(explain(ok, "mismatch"), "contraction_overflow")
        off = self.model_ctx(build, [q, k], [np.array([[1e38, 1.5e38]], np.float32)], [ort])
        self.assertIsNone(explain(off, "mismatch"))
        finite = np.array([[3.0, 1.0]], np.float32)
        small = self.model_ctx(build, [finite, k], [np.array([[9.0, 2.0]], np.float32)],
                               [np.array([[2.75, 2.0]], np.float32)])
        self.assertIsNone(explain(small, "mismatch"))

    def test_rnn_transcription_matches_ort(self):
        g = Gen(5)
        for op, gates, attrs in (("RNN", 1, {}), ("GRU", 3, {"linear_before_reset": 1}),
                                 ("GRU", 3, {"direction": "bidirectional"}),
                                 ("LSTM", 4, {"direction": "reverse", "clip": 0.5}),
                                 ("LSTM", 4, {"activations": ["Relu", "Sigmoid", "Tanh"]})):
            nd = 2 if attrs.get("direction") == "bidirectional" else 1
            x = g.data([3, 2, 3])
            w, r = g.data([nd, gates * 2, 3], lo=-1, hi=1), g.data([nd, gates * 2, 2], lo=-1, hi=1)
            bias, h0 = g.data([nd, 4 * gates], lo=-1, hi=1), g.data([nd, 2, 2], lo=-1, hi=1)
            b = Builder(Gen(1), "t", 14)
            ins = [b.input("x", x), b.const("w", w), b.const("r", r), b.const("b", bias), "",
                   b.const("h0", h0)]
            outs = b.node(op, ins, 2, hidden_size=2, **attrs)
            for o in outs:
                b.output(o)
            got = run_ort(b.case(sprinkle=False).model, [x])
            want = truth.recurrent(op, x, w, r, bias, h0, None, None,
                                   {k: (v.encode() if isinstance(v, str) else v) for k, v in attrs.items()})
            for a, e in zip(got, want):
                np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5, err_msg=f"{op} {attrs}")

    def test_rnn_nonfinite_needs_ieee_value(self):
        # x W^T = inf * 0 = NaN in the first step; ORT clamps it into a number
        x = np.array([[[np.inf]]], np.float32)
        w = np.array([[[0.0]]], np.float32)
        r = np.array([[[0.5]]], np.float32)

        def build(b, names):
            return b.node("RNN", names, 2, hidden_size=1)
        nan = np.full((1, 1, 1, 1), np.nan, np.float32)
        ort = [np.full((1, 1, 1, 1), 0.5, np.float32), np.full((1, 1, 1), 0.5, np.float32)]
        ok = self.model_ctx(build, [x, w, r], [nan, nan[0]], ort)
        self.assertEqual(explain(ok, "mismatch"), "rnn_nonfinite")
        wrong = self.model_ctx(build, [x, w, r], [np.full((1, 1, 1, 1), 0.9, np.float32),
                                                 np.full((1, 1, 1), 0.9, np.float32)], ort)
        self.assertIsNone(explain(wrong, "mismatch"))

    def test_reduce_noop_only_without_axes(self):
        x = np.array([[-1.0, 2.0]], np.float32)

        def noop(b, names):
            return b.node("ReduceL1", [names[0], b.const("axes", np.zeros(0, np.int64))],
                          noop_with_empty_axes=1)
        c = self.model_ctx(noop, [x], [np.abs(x)], [x])
        c.ref = [np.abs(x)]
        self.assertEqual(explain(c, "mismatch"), "reduce_noop_function_body")
        c.kiln = [np.array([[1.0, 3.0]], np.float32)]
        self.assertIsNone(explain(c, "mismatch"))

        def reduce_axis(b, names):
            return b.node("ReduceL1", [names[0], b.const("axes", np.array([0], np.int64))],
                          noop_with_empty_axes=1)
        d = self.model_ctx(reduce_axis, [x], [np.abs(x)], [x])
        d.ref = [np.abs(x)]
        self.assertIsNone(explain(d, "mismatch"))

    def test_unary_nan_only_at_nan(self):
        x = np.array([np.nan, 1.0], np.float32)
        ok = self.ctx(("Erf", {}), [x], np.array([np.nan, 0.8427008], np.float32),
                      np.array([1.0, 0.8427008], np.float32))
        self.assertEqual(explain(ok, "mismatch"), "unary_nan")
        other = self.ctx(("Erf", {}), [x], np.array([np.nan, 0.5], np.float32),
                         np.array([1.0, 0.8427008], np.float32))
        self.assertIsNone(explain(other, "mismatch"))

    def test_softplus_large_needs_the_value(self):
        x = np.array([1000.0, 1.0], np.float64)
        ort = np.array([np.inf, np.log1p(np.e)], np.float64)
        ok = self.ctx(("Softplus", {}), [x], np.array([1000.0, np.log1p(np.e)]), ort)
        self.assertEqual(explain(ok, "mismatch"), "softplus_large")
        off = self.ctx(("Softplus", {}), [x], np.array([999.0, np.log1p(np.e)]), ort)
        self.assertIsNone(explain(off, "mismatch"))

    def test_sum_order_within_bound(self):
        x = np.array([3e38, -3e38, 1e4, 1.0], np.float32).reshape(1, 1, 1, 4)
        want = np.array([2500.25], np.float32).reshape(1, 1, 1, 1)
        ok = self.ctx(("GlobalAveragePool", {}), [x], np.zeros_like(want), want)
        self.assertEqual(explain(ok, "mismatch"), "sum_order")
        small = np.array([3.0, -3.0, 1e4, 1.0], np.float32).reshape(1, 1, 1, 4)
        no = self.ctx(("GlobalAveragePool", {}), [small], np.zeros_like(want), want)
        self.assertIsNone(explain(no, "mismatch"))

    def test_resize_spec_roi_on_unscaled_axis(self):
        x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)

        def build(b, names):
            roi = b.const("roi", np.array([0, 0, 0, 0.1, 1, 1, 1, 0.75], np.float32))
            sc = b.const("scales", np.array([1, 1, 1, 1], np.float32))
            return b.node("Resize", [names[0], roi, sc], mode="nearest", nearest_mode="floor",
                          coordinate_transformation_mode="tf_crop_and_resize")
        ort = x.copy()  # ORT skips the roi of an axis with scale 1
        spec = np.array([0, 1, 1, 2, 3], np.float32).reshape(1, 1, 1, 5)
        ok = self.model_ctx(build, [x], [spec], [ort], opset=13)
        self.assertEqual(explain(ok, "mismatch"), "resize_spec")
        off = self.model_ctx(build, [x], [np.zeros_like(spec)], [ort], opset=13)
        self.assertIsNone(explain(off, "mismatch"))

    def test_entries_documented_and_unique(self):
        ids = [d.id for d in DIVERGENCES]
        self.assertEqual(len(ids), len(set(ids)))
        for d in DIVERGENCES:
            self.assertTrue(d.condition and d.why and d.op, d.id)

    def test_markdown_up_to_date(self):
        with open(os.path.join(HERE, "DIVERGENCES.md")) as f:
            self.assertEqual(f.read(), markdown(), "regenerate with python -m kilnfuzz --divergences-md")


class RunnerProcess(unittest.TestCase):
    """runner.Runner against stand-in programs that answer, die or hang."""

    def runner(self, script: str, timeout: float = 2.0):
        from kilnfuzz.runner import Runner
        tmp = tempfile.mkdtemp()
        exe = os.path.join(tmp, "fake-runner")
        with open(exe, "w") as f:
            f.write("#!/usr/bin/env python3\nimport sys, json, time\n" + script)
        os.chmod(exe, 0o755)
        return Runner(exe, os.path.join(tmp, "stderr"), timeout)

    def test_answers_in_order(self):
        r = self.runner("for line in sys.stdin:\n"
                        "    q = json.loads(line)\n"
                        "    print(json.dumps({'id': q['id'], 'status': 'ok', 'outputs': {}}), flush=True)\n")
        self.assertEqual(r.request({"id": "a"})["status"], "ok")
        self.assertEqual(r.request({"id": "b"})["id"], "b")
        r.close()

    def test_crash_then_restart(self):
        r = self.runner("line = sys.stdin.readline()\nsys.stderr.write('boom\\n')\nsys.exit(134)\n")
        a = r.request({"id": "a"})
        self.assertEqual(a["status"], "crash")
        self.assertIn("134", a["error"])
        self.assertIn("boom", a["error"])
        self.assertEqual(r.request({"id": "b"})["status"], "crash")  # a fresh process, dies again
        self.assertEqual(r.restarts, 2)

    def test_hang_is_killed(self):
        r = self.runner("sys.stdin.readline()\ntime.sleep(60)\n", timeout=0.5)
        a = r.request({"id": "a"})
        self.assertEqual(a["status"], "hang")
        self.assertEqual(r.restarts, 1)


class Regressions(unittest.TestCase):
    def test_committed_cases_are_current(self):
        from kilnfuzz.regressions import write_all
        committed = os.path.join(ROOT, "tests", "onnx", "fuzz-cases")
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_all(tmp):
                name = os.path.basename(path)
                for f in sorted(os.listdir(path)):
                    if f == "case.json":
                        continue  # holds the command with its relative path
                    self.assertTrue(filecmp.cmp(os.path.join(path, f), os.path.join(committed, name, f),
                                                shallow=False), f"{name}/{f} differs")


if __name__ == "__main__":
    unittest.main()
