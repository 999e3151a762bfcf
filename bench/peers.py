"""Times ONNX Runtime and PyTorch on kiln's benchmark workloads, in the same
run as kiln (called by `cargo run --release -p kiln-bench -- --peers`).

For each workload kiln wrote DIR/NAME/{model.kiln,input.npy,kiln_output.npy}.
model.kiln is a safetensors file: this script reads kiln's weights from it,
defines the same model in PyTorch, exports it to ONNX (DIR/NAME/model.onnx),
checks that both peers compute kiln's output, and times them with 2 threads.
It also measures the machine's floor: peak GEMM rate and memory bandwidth.

usage: python bench/peers.py DIR RUNS [gpu]
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

try:
    from safetensors.numpy import load_file
except ImportError:  # e.g. a GPU machine with torch but not safetensors

    def load_file(path):
        """Reads a safetensors file (kiln's .kiln) into numpy arrays."""
        dtypes = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}
        with open(path, "rb") as f:
            raw = f.read()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        out = {}
        for name, t in header.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            out[name] = np.frombuffer(raw[base + a : base + b], dtype=dtypes[t["dtype"]]).reshape(t["shape"]).copy()
        return out


THREADS = 2


class Mlp(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = {k: torch.from_numpy(v) for k, v in w.items()}

    def forward(self, x):
        w = self.w
        h = torch.relu(x @ w["fc1/weight"] + w["fc1/bias"])
        h = torch.relu(h @ w["fc2/weight"] + w["fc2/bias"])
        return h @ w["fc3/weight"] + w["fc3/bias"]


class Cnn(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = {k: torch.from_numpy(v) for k, v in w.items()}

    def conv_bn(self, name, x, stride, relu):
        w = self.w
        k = w[f"{name}/conv/weight"].shape[-1]
        y = F.conv2d(x, w[f"{name}/conv/weight"], w[f"{name}/conv/bias"].reshape(-1), stride=stride, padding=k // 2)
        g = w[f"{name}/bn/gamma"].reshape(-1)
        b = w[f"{name}/bn/beta"].reshape(-1)
        m = w[f"{name}/bn/mean"].reshape(-1)
        v = w[f"{name}/bn/var"].reshape(-1)
        y = F.batch_norm(y, m, v, g, b, training=False, eps=1e-5)
        return torch.relu(y) if relu else y

    def forward(self, x):
        s = self.conv_bn("stem", x, 1, True)
        r = self.conv_bn("b1/c1", s, 1, True)
        r = self.conv_bn("b1/c2", r, 1, False)
        s = torch.relu(r + s)
        r = self.conv_bn("b2/c1", s, 2, True)
        r = self.conv_bn("b2/c2", r, 1, False)
        p = self.conv_bn("b2/proj", s, 2, False)
        s = torch.relu(r + p)
        pooled = s.mean(dim=(2, 3))
        return pooled @ self.w["fc/weight"] + self.w["fc/bias"]


class Xfmr(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = {k: torch.from_numpy(v) for k, v in w.items()}

    def forward(self, x):
        w = self.w
        b, t, d = x.shape
        h = 4
        hd = d // h
        y = F.layer_norm(x, (d,), w["ln1/gamma"], w["ln1/beta"], eps=1e-5)

        def proj(n, z):
            return z @ w[f"attn/{n}/weight"] + w[f"attn/{n}/bias"]

        def split(z):
            return z.reshape(b, t, h, hd).permute(0, 2, 1, 3)

        q, k, v = split(proj("q", y)), split(proj("k", y)), split(proj("v", y))
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
        ctx = (torch.softmax(s, dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        x = x + proj("out", ctx)
        y = F.layer_norm(x, (d,), w["ln2/gamma"], w["ln2/beta"], eps=1e-5)
        f = F.gelu(y @ w["ffn1/weight"] + w["ffn1/bias"])
        return x + f @ w["ffn2/weight"] + w["ffn2/bias"]


class EwChain(torch.nn.Module):
    def forward(self, x):
        return F.gelu(x * 1.7 + 0.3) * torch.sigmoid(x) - torch.tanh(x)


class MlpTrain(torch.nn.Module):
    """One SGD step of MLP 784-256-10; returns the loss before the step."""

    def __init__(self, w):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.from_numpy(w["fc1/weight"].copy()))
        self.b1 = torch.nn.Parameter(torch.from_numpy(w["fc1/bias"].copy()))
        self.w2 = torch.nn.Parameter(torch.from_numpy(w["fc2/weight"].copy()))
        self.b2 = torch.nn.Parameter(torch.from_numpy(w["fc2/bias"].copy()))
        self.opt = torch.optim.SGD(self.parameters(), lr=0.01)
        self.y = torch.tensor([(i * 7) % 10 for i in range(64)])

    def forward(self, x):
        with torch.enable_grad():
            h = torch.relu(x @ self.w1 + self.b1)
            loss = F.cross_entropy(h @ self.w2 + self.b2, self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return loss.detach()


TRAINING = {"mlp_train"}

MODELS = {"mlp_b1": Mlp, "mlp_b128": Mlp, "cnn_b1": Cnn, "cnn_b32": Cnn, "xfmr_b1": Xfmr, "ew_chain": lambda w: EwChain(), "ew_chain_64m": lambda w: EwChain(), "mlp_train": MlpTrain}


def timed(fn, runs):
    fn()
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, round((len(times) - 1) * 0.9))]


def floor_rates():
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    best = min(timed(lambda: a @ b, 10))
    gflops = 2 * 1024**3 / best / 1e6
    src = np.ones(64 << 20, dtype=np.float32)
    dst = np.empty_like(src)
    t = min(timed(lambda: np.copyto(dst, src), 5))
    gbps = 2 * src.nbytes / t / 1e6
    return gflops, gbps


def cuda_timed(fn, runs):
    """Median ms of `fn` on the GPU, timed with CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def gpu_main(root, runs):
    """The GPU mode: PyTorch eager and torch.compile (default and
    reduce-overhead) on the same GPU, strict FP32 (TF32 off), against kiln's
    `--device cuda` figures, plus the device-to-device copy bandwidth."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    doc = json.load(open(os.path.join(root, "kiln.json")))
    src = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_ms = cuda_timed(lambda: dst.copy_(src), 20)
    copy_gbps = 2 * src.numel() / copy_ms / 1e6
    print(f"\nGPU: {torch.cuda.get_device_name()}; device-to-device copy {copy_gbps:.0f} GB/s")
    print(f"{'workload':<13} {'kiln ms':>9} {'eager ms':>9} {'compile':>9} {'c-r-o':>9} {'best/kiln':>10} {'max|diff|':>10}")
    for r in doc["workloads"]:
        name = r["name"]
        d = os.path.join(root, name)
        weights = load_file(os.path.join(d, "model.kiln"))
        x = torch.from_numpy(np.load(os.path.join(d, "input.npy"))).to(dev)
        want = np.load(os.path.join(d, "kiln_output.npy"))
        model = MODELS[name](weights).eval()
        if hasattr(model, "w"):
            model.w = {k: v.to(dev) for k, v in model.w.items()}
        with torch.inference_mode():
            got = model(x).cpu().numpy()
            eager = cuda_timed(lambda: model(x), runs)
            timings = [eager]
            for mode in ["default", "reduce-overhead"]:
                if os.environ.get("KILN_BENCH_TORCH_COMPILE") == "0":
                    timings.append(float("nan"))
                    continue
                try:
                    c = torch.compile(model, mode=mode)
                    timings.append(cuda_timed(lambda: c(x), runs))
                except Exception as e:  # a compile failure is reported, not fatal
                    print(f"  {name}: torch.compile({mode}) failed: {e}")
                    timings.append(float("nan"))
        k = r["median_ms"]
        best = min(t for t in timings if t == t)
        diff = float(np.max(np.abs(got - want)))
        print(f"{name:<13} {k:>9.4f} {timings[0]:>9.4f} {timings[1]:>9.4f} {timings[2]:>9.4f} {best / k:>10.2f} {diff:>10.2e}")
        if name.startswith("ew_chain"):
            print(f"  {name}: kiln at {r['bytes'] / k / 1e6 / copy_gbps * 100:.0f}% of the copy bandwidth")


def main():
    if len(sys.argv) > 3 and sys.argv[3] == "gpu":
        return gpu_main(sys.argv[1], int(sys.argv[2]))
    global ort
    import onnxruntime as ort

    torch.set_num_threads(THREADS)
    root, runs = sys.argv[1], int(sys.argv[2])
    doc = json.load(open(os.path.join(root, "kiln.json")))
    kiln = {r["name"]: r for r in doc["workloads"]}
    torch_gflops, torch_gbps = floor_rates()
    # The floor takes the best rate anyone measured on this machine.
    gflops = max(torch_gflops, doc["peak_gflops"])
    gbps = max(torch_gbps, doc["copy_gbps"])
    print(f"\nfloor: peak GEMM {gflops:.0f} GFLOP/s, copy bandwidth {gbps:.1f} GB/s (best of kiln's and torch's measurements)")
    imported = {}
    header = f"{'workload':<10} {'kiln ms':>9} {'ORT ms':>9} {'torch ms':>9} {'floor ms':>9} {'ORT/kiln':>9} {'torch/kiln':>10} {'kiln/floor':>10} {'max|diff|':>10}"
    print(header)
    for name, r in kiln.items():
        d = os.path.join(root, name)
        weights = load_file(os.path.join(d, "model.kiln"))
        x = np.load(os.path.join(d, "input.npy"))
        want = np.load(os.path.join(d, "kiln_output.npy"))
        model = MODELS[name](weights).eval()
        xt = torch.from_numpy(x)
        if name in TRAINING:
            # Training: torch only (ONNX Runtime's training API is a separate package);
            # compare the first step's loss, then time steps.
            got_torch = model(xt).numpy()
            t_torch = timed(lambda: model(xt), runs)[0]
            diff = float(np.max(np.abs(got_torch - want)))
            k = r["median_ms"]
            floor = max(r["flops"] / (gflops * 1e6), r["bytes"] / (gbps * 1e6))
            print(f"{name:<10} {k:>9.4f} {'-':>9} {t_torch:>9.4f} {floor:>9.4f} {'-':>9} {t_torch / k:>10.2f} {k / floor:>10.2f} {diff:>10.2e}")
            continue
        with torch.inference_mode():
            got_torch = model(xt).numpy()
            t_torch = timed(lambda: model(xt), runs)[0]
        onnx_path = os.path.join(d, "model.onnx")
        torch.onnx.export(model, (xt,), onnx_path, input_names=["x"], output_names=["y"], dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        got_ort = sess.run(None, {"x": x})[0]
        t_ort = timed(lambda: sess.run(None, {"x": x}), runs)[0]
        imported[name] = check_import(onnx_path, d, got_ort)
        diff = max(float(np.max(np.abs(got_torch - want))), float(np.max(np.abs(got_ort - want))))
        floor = max(r["flops"] / (gflops * 1e6), r["bytes"] / (gbps * 1e6))
        k = r["median_ms"]
        print(f"{name:<10} {k:>9.4f} {t_ort:>9.4f} {t_torch:>9.4f} {floor:>9.4f} {t_ort / k:>9.2f} {t_torch / k:>10.2f} {k / floor:>10.2f} {diff:>10.2e}")
    print("\nthe exported ONNX files imported by kiln (kiln import, kiln run) against ONNX Runtime:")
    for name, result in imported.items():
        print(f"{name:<10} {result}")
    rss_table(root, list(kiln))


def kiln_exe():
    """The kiln CLI beside kiln-bench (same build)."""
    bench = os.environ.get("KILN_BENCH_EXE", "target/release/kiln-bench")
    return os.path.join(os.path.dirname(bench), "kiln")


def check_import(onnx_path, d, want):
    """Imports the exported ONNX file with `kiln import`, runs it with `kiln
    run` on the same input and compares with ONNX Runtime's output."""
    import subprocess
    kiln = kiln_exe()
    out = os.path.join(d, "imported")
    r = subprocess.run([kiln, "import", onnx_path, "-o", os.path.join(d, "imported.kiln")], capture_output=True, text=True)
    if r.returncode != 0:
        return "import failed: " + r.stderr.strip().replace("\n", " | ")
    r = subprocess.run([kiln, "run", os.path.join(d, "imported.kiln"), "--input", "x=" + os.path.join(d, "input.npy"), "--output", out], capture_output=True, text=True)
    if r.returncode != 0:
        return "run failed: " + r.stderr.strip().replace("\n", " | ")
    got = np.load(os.path.join(out, "y.npy"))
    if got.shape != want.shape:
        return f"shape {got.shape}, ONNX Runtime {want.shape}"
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    ok = np.allclose(got, want, rtol=1e-4, atol=1e-5)
    return f"{'match' if ok else 'MISMATCH'} (max |diff| {diff:.2e})"


ORT_PROBE = """
import resource, sys
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions()
so.intra_op_num_threads = 2
so.inter_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
for _ in range(int(sys.argv[3])):
    sess.run(None, {"x": x})
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""


def child_peak_rss_mib(cmd):
    """Runs `cmd`, which prints its own peak resident set size (VmHWM, KiB)
    last; returns it in MiB. (A child's rusage would count the memory of
    this process, which it was forked from.)"""
    import subprocess

    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024.0


def rss_table(root, names):
    """Peak RSS of kiln and ONNX Runtime, each running one workload alone in
    a process of its own (load, compile, 20 runs)."""
    exe = os.environ.get("KILN_BENCH_EXE")
    if not exe:
        return
    print(f"\npeak RSS, one process per workload (load, compile, 20 runs):")
    print(f"{'workload':<10} {'kiln MiB':>9} {'ORT MiB':>9} {'kiln/ORT':>9}")
    for name in names:
        d = os.path.join(root, name)
        onnx_path = os.path.join(d, "model.onnx")
        if not os.path.exists(onnx_path):
            continue
        k = child_peak_rss_mib([exe, "--rss-probe", name, "--runs", "20"])
        o = child_peak_rss_mib([sys.executable, "-c", ORT_PROBE, onnx_path, os.path.join(d, "input.npy"), "20"])
        print(f"{name:<10} {k:>9.1f} {o:>9.1f} {k / o:>9.2f}")


if __name__ == "__main__":
    main()
