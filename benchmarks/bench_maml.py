"""Benchmark MAML meta-steps: loop, vmap and compiled, second and first order, CPU and (if present) CUDA.

    python3 benchmarks/bench_maml.py                       # Conv-4, Omniglot-sized 5-way 1-shot, meta-batch 32
    python3 benchmarks/bench_maml.py --modes loop vmap compiled --n-query 1   # the paper's training tasks
    python3 benchmarks/bench_maml.py --model sinusoid --meta-batch 25
    python3 benchmarks/bench_maml.py --devices cuda --json results.json

Each configuration runs in a fresh Python process, so its peak memory is its own: on CUDA the
peak of ``torch.cuda.max_memory_allocated`` during the meta-steps, on a CPU the growth of the
process's peak resident set size (``ru_maxrss``) over what it held before the first meta-step.
One meta-step = adapt every task of the meta-batch, compute the query losses, back-propagate
the meta-gradient and take one Adam step, exactly as ``helpers.maml.MAML.meta_step`` does.
Inputs are random images of the right shape: the timings do not depend on the pixels.
``compiled`` (``torch.compile`` of the whole meta-gradient, :func:`helpers.maml.compiled_meta_gradient`)
pays for its compilation in the warm-up meta-step; ``warm-up s`` shows that price beside the
steady time per meta-step.

Against what floor? Each configuration also counts the floating-point operations of one
meta-step (``torch.utils.flop_counter.FlopCounterMode``: the forward passes, the inner
gradients, the meta-gradient with its second-order terms) and, on a CPU, measures the rate of a
large float32 matrix product at the same thread count. ``floor ms`` is the count divided by that
rate: the time the meta-step would take if every operation ran as fast as a big matmul, which
convolutions on 28x28 images with few channels never quite do.

This is a benchmark, not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_batch(model_kind: str, n_tasks: int, n_way: int, k_shot: int, n_query: int, device):
    import torch

    from helpers.maml import SinusoidTasks, TaskBatch

    g = torch.Generator().manual_seed(0)
    if model_kind == "sinusoid":
        batch, _, _ = SinusoidTasks().sample(n_tasks, k_shot, n_query, g)
        return batch.to(device)
    support = torch.rand(n_tasks, n_way * k_shot, 1, 28, 28, generator=g)
    query = torch.rand(n_tasks, n_way * n_query, 1, 28, 28, generator=g)
    labels_s = torch.arange(n_way).repeat_interleave(k_shot).repeat(n_tasks, 1)
    labels_q = torch.arange(n_way).repeat_interleave(n_query).repeat(n_tasks, 1)
    return TaskBatch(support, labels_s, query, labels_q).to(device)


def run_one(config: dict) -> dict:
    """Time ``config['repeats']`` meta-steps (after ``config['warmup']``) in this process."""
    import torch
    import torch.nn.functional as F

    from helpers.maml import MAML, maml_conv4, sinusoid_net

    torch.manual_seed(0)
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    if config["model"] == "sinusoid":
        model, loss, inner_lr = sinusoid_net().to(device), F.mse_loss, 0.01
    else:
        model, loss, inner_lr = maml_conv4(config["n_way"]).to(device), F.cross_entropy, 0.4
    learner = MAML(
        model, inner_lr, 1e-3, config["inner_steps"], config["first_order"], loss, config["mode"]
    )
    batch = make_batch(
        config["model"],
        config["meta_batch"],
        config["n_way"],
        config["k_shot"],
        config["n_query"],
        device,
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warm_start = time.perf_counter()
    for _ in range(config["warmup"]):
        learner.meta_step(batch)
    sync()
    warmup_s = time.perf_counter() - warm_start
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        learner.meta_step(batch)
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        memory = "CUDA max_memory_allocated"
    else:
        peak_mb = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        ) / 1024  # ru_maxrss is in KiB on Linux
        memory = "growth of peak RSS (warm-up excluded)"
    ms = 1000 * sorted(times)[len(times) // 2]
    from torch.utils.flop_counter import FlopCounterMode

    # The work is counted on the loop: vmap does the same arithmetic, but the counter's formulas
    # do not fit the batched convolutions vmap issues (for vmap it reported 6 to 11 times the
    # loop's count, at a rate above a large matmul's, which cannot be).
    counted = learner
    if config["mode"] != "loop":
        counted = MAML(
            model, inner_lr, 1e-3, config["inner_steps"], config["first_order"], loss, "loop"
        )
    counter = FlopCounterMode(display=False)
    with counter:
        counted.meta_step(batch)
    gflop = counter.get_total_flops() / 1e9
    matmul_gflops = matmul_rate(device) if device.type == "cpu" else None
    return {
        **config,
        "ms_per_meta_step": round(ms, 1),
        "warmup_s": round(warmup_s, 1),
        "meta_steps_per_s": round(1000 / ms, 2),
        "peak_mb": round(peak_mb, 1),
        "memory_measure": memory,
        "all_ms": [round(1000 * t, 1) for t in times],
        "gflop_per_meta_step": round(gflop, 2),
        "achieved_gflops": round(gflop / (ms / 1000), 1),
        "matmul_gflops": matmul_gflops,
        "floor_ms": None if not matmul_gflops else round(1000 * gflop / matmul_gflops, 1),
    }


def matmul_rate(device, size: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of a ``size`` x ``size`` float32 matrix product on ``device`` (median of ``repeats``)."""
    import torch

    a = torch.rand(size, size, device=device)
    b = torch.rand(size, size, device=device)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return round(2 * size**3 / sorted(times)[repeats // 2] / 1e9, 1)


def describe(device: str, threads: int | None = None) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    threads = torch.get_num_threads() if threads is None else threads  # what each run sets
    return f"CPU ({os.cpu_count()} cores visible, {threads} torch thread{'s' * (threads != 1)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["conv4", "sinusoid"], default="conv4")
    parser.add_argument(
        "--devices", nargs="*", default=None, help="default: cpu, and cuda when available"
    )
    parser.add_argument(
        "--modes", nargs="*", default=["loop", "vmap"], choices=["loop", "vmap", "compiled"]
    )
    parser.add_argument("--orders", nargs="*", default=["second", "first"])
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads on the CPU (default: torch's choice)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:  # one configuration, in its own process
        print(json.dumps(run_one(json.loads(args.child))))
        return

    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for device in devices:
        task = (
            f"K={args.k_shot} support and {args.n_query} query points"
            if args.model == "sinusoid"
            else f"{args.n_way}-way {args.k_shot}-shot, {args.n_query} queries per class"
        )
        print(
            f"\n{args.model}, device {device}: {describe(device, args.threads)}; meta-batch {args.meta_batch}, {task}, "
            f"{args.inner_steps} inner step(s)"
        )
        print(
            f"{'order':>7} {'mode':>8} {'ms/meta-step':>13} {'meta-steps/s':>13} {'peak MB':>9} "
            f"{'GFLOP':>7} {'GFLOP/s':>8} {'floor ms':>9} {'warm-up s':>10}"
        )
        for order in args.orders:
            for mode in args.modes:
                config = dict(
                    model=args.model,
                    device=device,
                    mode=mode,
                    first_order=order == "first",
                    meta_batch=args.meta_batch,
                    n_way=args.n_way,
                    k_shot=args.k_shot,
                    n_query=args.n_query,
                    inner_steps=args.inner_steps,
                    warmup=args.warmup,
                    repeats=args.repeats,
                    threads=args.threads if device == "cpu" else None,
                )
                done = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(config)],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                if done.returncode != 0:
                    print(f"{order:>7} {mode:>8} failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["hardware"] = describe(device, args.threads)
                results.append(result)
                floor = "-" if result["floor_ms"] is None else f"{result['floor_ms']:.1f}"
                print(
                    f"{order:>7} {mode:>8} {result['ms_per_meta_step']:>13.1f} {result['meta_steps_per_s']:>13.2f} "
                    f"{result['peak_mb']:>9.1f} {result['gflop_per_meta_step']:>7.2f} "
                    f"{result['achieved_gflops']:>8.1f} {floor:>9} {result['warmup_s']:>10.1f}"
                )
        for order in args.orders:
            pair = {
                r["mode"]: r
                for r in results
                if r["device"] == device and r["first_order"] == (order == "first")
            }
            for fast in ("vmap", "compiled"):
                if {"loop", fast} <= set(pair):
                    ratio = pair["loop"]["ms_per_meta_step"] / pair[fast]["ms_per_meta_step"]
                    print(
                        f"{order}-order on {device}: {fast} is {ratio:.2f}x the speed of the loop (loop ms / {fast} ms)"
                    )
        cpu_rates = [
            r["matmul_gflops"] for r in results if r["device"] == device and r["matmul_gflops"]
        ]
        if cpu_rates:
            print(
                f"a 1024x1024 float32 matmul runs at {max(cpu_rates):.1f} GFLOP/s here; floor ms = GFLOP / that rate"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
