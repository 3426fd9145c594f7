"""How many CPU threads should PyTorch use here? A Conv-4 training step at 1, 2, ... threads.

The step is one ProtoNet-sized batch of the course (20-way 5-shot with 15 queries per class:
400 Omniglot-sized 28x28 images) through the course's Conv-4, forward and backward, which is
what notebooks 03, 04, 06, 07 and 09 spend their CPU time on. ``--busy N`` starts N other
CPU-bound processes for the duration, as on a laptop doing something else or a shared hub::

    python benchmarks/bench_threads.py                 # idle machine
    python benchmarks/bench_threads.py --busy 1        # one other CPU-bound process

It prints the median seconds per step for each thread count, the machine's load average, and
what :func:`helpers.device.default_threads` chooses for this machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from helpers.device import available_cpus, default_threads
from helpers.nets import Conv4


def _spin(stop) -> None:  # a CPU-bound neighbour
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def step_seconds(threads: int, steps: int, batch: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = Conv4()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    images = torch.rand(batch, 1, 28, 28)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = net(images).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # the first two warm up the allocator and oneDNN
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts to time (default: 1 .. CPUs)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument(
        "--busy", type=int, default=0, help="other CPU-bound processes to run meanwhile"
    )
    args = parser.parse_args()
    cpus = available_cpus()
    counts = args.threads or list(range(1, cpus + 1))
    stop = multiprocessing.Event()
    neighbours = [
        multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)
    ]
    for p in neighbours:
        p.start()
    try:
        print(
            f"{cpus} usable CPUs (os.cpu_count() {os.cpu_count()}), {args.busy} busy neighbour(s), "
            f"load average before {os.getloadavg()[0]:.2f}; Conv-4 forward+backward on {args.batch} images 28x28"
        )
        results = {}
        for threads in counts:
            results[threads] = step_seconds(threads, args.steps, args.batch)
            print(f"  {threads} thread(s): {results[threads] * 1000:7.1f} ms per step")
        fastest = min(results, key=results.get)
        print(
            f"fastest here: {fastest} thread(s); helpers.device.default_threads() chooses {default_threads(cpus)}; "
            f"load average after {os.getloadavg()[0]:.2f}"
        )
    finally:
        stop.set()
        for p in neighbours:
            p.join(timeout=5)


if __name__ == "__main__":
    main()
