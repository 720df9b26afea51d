"""The GPU measurements of bench/gpu.sh: training step, inference, all-reduce.

Each subcommand writes one JSON file. On a CUDA device everything runs in bf16 autocast
with PyTorch's scaled-dot-product attention (flash where the shapes allow it: the vision
tower; the text tower's padding mask needs the memory-efficient kernel). Without one,
`--cpu-smoke` runs the same code on the CPU at tiny sizes, to prove the script works.

    python bench/gpu_bench.py train  --out DIR [--cpu-smoke]
    python bench/gpu_bench.py infer  --out DIR [--cpu-smoke]
    python bench/gpu_bench.py allreduce --out DIR [--cpu-smoke]   # starts its 2 ranks

MFU is counted FLOPs per step (torch's FlopCounterMode over one real step) / step time /
the card's dense bf16 peak, looked up from its name (`bf16_peak`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's data sheets.
PEAKS = [("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIE", 756e12), ("H100", 989e12),
         ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12)]  # fmt: skip


def bf16_peak(name: str) -> float | None:
    """The dense bf16 peak of a card from its name (first match wins), or None."""
    upper = name.upper()
    return next((peak for key, peak in PEAKS if key in upper), None)


def device_info(cpu_smoke: bool) -> dict:
    if cpu_smoke or not torch.cuda.is_available():
        return {"device": "cpu", "name": "cpu", "bf16_peak_flops": None, "torch": torch.__version__}
    name = torch.cuda.get_device_name(0)
    return {"device": "cuda", "name": name, "bf16_peak_flops": bf16_peak(name),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "devices": torch.cuda.device_count()}  # fmt: skip


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(device: str):
    # bf16 on the GPU (what the trainer does there); fp32 on the CPU smoke path.
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _attention():
    """SDPA restricted to the fused kernels: flash first, memory-efficient where a mask
    rules flash out (the text tower). No silent fall-back to the math kernel."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def _write(out: Path, name: str, doc: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def _timed(fn, device: str, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps


# --------------------------------------------------------------------------- train step


def train(out: Path, cpu_smoke: bool) -> None:
    from bench.train_step import make_batch
    from tipsv2_core.config import apply_overrides
    from tipsv2_core.recipes import get_recipe
    from tipsv2_core.train.meta_arch import TIPSv2MetaArch
    from tipsv2_core.train.optim import build_optimizer

    info = device_info(cpu_smoke)
    device = info["device"]
    # (variant, batch, global/local px): the b14 recipe's low-res stage, 6 local crops.
    cases = [("nano14", 2, 56, 28)] if device == "cpu" else [
        ("ti14", 256, 224, 98), ("s14", 128, 224, 98), ("b14", 128, 224, 98)]  # fmt: skip
    rows = []
    for variant, batch, g, loc in cases:
        # The b14 recipe (K = 32768 shared head, Adafactor) on the GPU; the demo's small
        # heads on the CPU smoke path, where the 14.7M-parameter head alone takes seconds.
        recipe = "b14" if device == "cuda" else "demo"
        cfg = apply_overrides(get_recipe(recipe), [
            f"model.variant={variant}", f"stages.0.batch_size={batch}",
            f"stages.0.global_size={g}", f"stages.0.local_size={loc}"])  # fmt: skip
        torch.manual_seed(0)
        arch = TIPSv2MetaArch(cfg).to(device)
        opt = build_optimizer(arch.trainable_modules(), cfg.optim)
        data = {k: v.to(device) for k, v in make_batch(cfg, batch).items()}

        def step(arch=arch, opt=opt, data=data) -> None:
            with _attention(), _autocast(device):
                loss, _ = arch.training_forward(data, teacher_temp=0.04)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            arch.update_teacher(0.996)

        step()  # first step: kernels chosen, optimiser state made
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = _timed(step, device, warmup=2, reps=3 if device == "cpu" else 10)
        row = {"variant": variant, "batch": batch, "global_size": g, "local_size": loc,
               "recipe": recipe, "num_local": cfg.data.num_local, "flops_per_step": flops,
               "step_s": seconds,
               "images_per_s": batch / seconds, "achieved_tflops": flops / seconds / 1e12,
               "precision": "bf16 autocast" if device == "cuda" else "fp32"}  # fmt: skip
        if info["bf16_peak_flops"]:
            row["mfu_vs_bf16_dense_peak"] = flops / seconds / info["bf16_peak_flops"]
        if device == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        mfu = (
            f", MFU {row['mfu_vs_bf16_dense_peak']:.1%}" if "mfu_vs_bf16_dense_peak" in row else ""
        )
        print(f"train {variant} b{batch} {g}/{loc}: {row['images_per_s']:.1f} img/s, "
              f"{row['achieved_tflops']:.1f} TFLOP/s{mfu}")  # fmt: skip
        del arch, opt, data
        if device == "cuda":
            torch.cuda.empty_cache()
    _write(out, "train_step", {**info, "rows": rows})


# ----------------------------------------------------------------------------- inference


def _ort_cuda(vision, size: int, batches: list[int]) -> dict:
    """ONNX Runtime on CUDA, fp32 graph, when the CUDA provider is installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider"}
    import tempfile

    class Cls(torch.nn.Module):
        def __init__(self, v) -> None:
            super().__init__()
            self.v = v

        def forward(self, x):
            return self.v(x).cls1

    model = Cls(vision).float().cpu().eval()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vision.onnx"
        x = torch.rand(1, 3, size, size)
        torch.onnx.export(model, (x,), str(path), dynamo=True, optimize=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        for b in batches:
            feed = {sess.get_inputs()[0].name: torch.rand(b, 3, size, size).numpy()}
            sec = _timed(lambda feed=feed: sess.run(None, feed), "cpu", warmup=3, reps=10)
            out[f"b{b}_images_per_s"] = b / sec
    return out


def infer(out: Path, cpu_smoke: bool) -> None:
    from tipsv2_core.models.tips import TIPSModel

    info = device_info(cpu_smoke)
    device = info["device"]
    cases = [("nano14", 56, [1, 2])] if device == "cpu" else [
        ("b14", 224, [1, 64, 256]), ("b14", 448, [1, 32])]  # fmt: skip
    rows = []
    for variant, size, batches in cases:
        torch.manual_seed(0)
        vision = TIPSModel(variant).vision.to(device).eval()
        flash_ok = None
        if device == "cuda":  # the vision tower has no mask: flash must take it alone
            try:
                with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION), _autocast(device):
                    vision(torch.rand(2, 3, size, size, device=device))
                flash_ok = True
            except RuntimeError as e:
                flash_ok = f"flash refused: {e}"[:300]
        for b in batches:
            x = torch.rand(b, 3, size, size, device=device)

            def fwd(x=x, vision=vision) -> None:
                with torch.no_grad(), _attention(), _autocast(device):
                    vision(x)

            sec = _timed(fwd, device, warmup=3, reps=3 if device == "cpu" else 20)
            rows.append({"variant": variant, "size": size, "batch": b, "images_per_s": b / sec,
                         "ms_per_batch": 1000 * sec, "flash_only_ok": flash_ok,
                         "precision": "bf16 autocast" if device == "cuda" else "fp32"})  # fmt: skip
            print(f"infer {variant}@{size} b{b}: {b / sec:.1f} img/s ({1000 * sec:.2f} ms)")
        if device == "cuda" and size == 224:
            try:
                ort_res = _ort_cuda(vision, size, [1, 64])
            except Exception as e:  # report, do not lose the rest of the run
                ort_res = {"error": f"{type(e).__name__}: {e}"[:500]}
            rows.append({"variant": variant, "size": size, "ort_cuda_fp32": ort_res})
            print(f"ORT CUDA {variant}@{size}: {ort_res}")
        del vision
    _write(out, "inference", {**info, "rows": rows})


# ----------------------------------------------------------------------------- allreduce


def _rank(backend: str, rank: int, port: int, out: Path, cpu_smoke: bool) -> None:
    """One of the two ranks: all-reduce of float32 tensors of several sizes."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    on_gpu = not cpu_smoke and torch.cuda.is_available()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if on_gpu else "cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=2)
    sizes = [1 << 16, 1 << 20] if not on_gpu else [1 << 20, 16 << 20, 64 << 20, 256 << 20]
    rows = []
    for nbytes in sizes:
        t = torch.ones(nbytes // 4, device=device)
        for _ in range(3):
            dist.all_reduce(t)
        if on_gpu:
            torch.cuda.synchronize()
        dist.barrier()
        reps = 10
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(t)
        if on_gpu:
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / reps
        # Bus bandwidth (nccl-tests' convention): algbw × 2(n-1)/n, = algbw for n = 2.
        rows.append({"bytes": nbytes, "seconds": sec, "bus_gb_per_s": nbytes / sec / 1e9})
    check = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(check)
    ok = bool((check == 3).all())
    dist.destroy_process_group()
    if rank == 0:
        where = f"{device}" + (" (both ranks on one GPU)" if on_gpu and
                               torch.cuda.device_count() < 2 else "")  # fmt: skip
        _write(out, f"allreduce_{backend}", {"backend": backend, "device": where,
               "sum_correct": ok, "rows": rows})  # fmt: skip


def allreduce(out: Path, cpu_smoke: bool) -> None:
    """Starts 2 ranks per backend (nccl, then gloo; gloo only on the CPU) and reports
    which worked; a backend that fails or hangs (NCCL refuses two ranks on one GPU in
    some versions) is recorded with its error, not fatal."""
    on_gpu = not cpu_smoke and torch.cuda.is_available()
    backends = ["nccl", "gloo"] if on_gpu else ["gloo"]
    summary = {"gpus": torch.cuda.device_count() if on_gpu else 0, "backends": {}}
    if on_gpu and torch.cuda.device_count() < 2:
        summary["note"] = "one GPU: both ranks share it, so this checks NCCL works, not NVLink"
    for backend in backends:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, __file__, "rank", "--backend", backend, "--port", str(port),
               "--out", str(out)] + (["--cpu-smoke"] if cpu_smoke else [])  # fmt: skip
        procs = [subprocess.Popen([*cmd, "--rank", str(r)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for r in (0, 1)]  # fmt: skip
        status, logs = "ok", []
        for p in procs:
            try:
                logs.append(p.communicate(timeout=120)[0])
                if p.returncode != 0:
                    status = f"failed (exit {p.returncode})"
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                status = "hung for 120 s, killed"
                logs.append("")
        summary["backends"][backend] = {"status": status,
                                        "log_tail": [lg[-600:] for lg in logs if lg]}  # fmt: skip
        print(f"all-reduce, 2 ranks, {backend}: {status}")
        result = out / f"allreduce_{backend}.json"
        if status == "ok" and result.is_file():
            for row in json.loads(result.read_text())["rows"]:
                print(f"   {row['bytes'] / 2**20:7.2f} MiB: {row['bus_gb_per_s']:.2f} GB/s")
    _write(out, "allreduce", summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["train", "infer", "allreduce", "rank"])
    ap.add_argument("--out", default="bench/results/gpu")
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU, tiny sizes")
    ap.add_argument("--backend", default="gloo")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--port", type=int, default=29500)
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.what == "rank":
        _rank(args.backend, args.rank, args.port, out, args.cpu_smoke)
    else:
        {"train": train, "infer": infer, "allreduce": allreduce}[args.what](out, args.cpu_smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
