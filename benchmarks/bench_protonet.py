"""Benchmark: Prototypical Network training speed (not a test; prints a table).

    python benchmarks/bench_protonet.py                          # paper settings: 60-way, 1 and 5 shots
    python benchmarks/bench_protonet.py --n-way 20 --episodes 30 --threads 1
    METALEARN_DEVICE=cpu python benchmarks/bench_protonet.py     # force the CPU on a GPU machine

For each setting it times, per episode: drawing an episode with the images already on the
device (``DeviceEpisodeSampler``), the model's own compute (forward, loss, backward, Adam step
on one fixed episode), and the whole loop of ``helpers.training.train_episodic`` (sampling,
compute, history), and reports end-to-end episodes per second. Write the command, the machine
and the numbers next to any claim made from them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(function, count: int, device: torch.device) -> float:
    """Seconds per call of ``function``, averaged over ``count`` calls after one warm-up call."""
    function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-way", type=int, nargs="+", default=[60])
    parser.add_argument("--k-shot", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--n-query", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=100, help="episodes timed per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    from helpers import protonet
    from helpers.device import describe_device, training_device
    from helpers.episodes import omniglot_dataset
    from helpers.nets import Conv4
    from helpers.training import DeviceEpisodeSampler, train_episodic

    device = training_device(args.device, args.threads)  # as the training command does
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; device {describe_device(device)}; torch {torch.__version__}"
    )
    data = omniglot_dataset("vinyals-trainval")
    print(
        f"{'setting':>22} | {'sample (ms)':>11} | {'compute (ms)':>12} | {'train_episodic (ms)':>19} | episodes/s"
    )
    for n_way in args.n_way:
        for k_shot in args.k_shot:
            torch.manual_seed(0)
            encoder = Conv4().to(device)
            method = protonet.ProtoNet(encoder)
            optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
            sampler = DeviceEpisodeSampler(data, n_way, k_shot, args.n_query, device=device, seed=0)
            sample = timed(sampler.sample, args.episodes, device)
            fixed = sampler.sample()

            def step(episode=fixed, method=method, optimizer=optimizer):
                loss, _ = method.episode_loss(episode)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            compute = timed(step, args.episodes, device)
            train_episodic(method, sampler, 5, optimizer, device=device, progress=False)  # warm-up
            synchronize(device)
            history = train_episodic(
                method, sampler, args.episodes, optimizer, device=device, progress=False
            )
            synchronize(device)
            loop = history.seconds / len(history.episode)
            setting = f"{n_way}-way {k_shot}-shot {args.n_query}-query"
            print(
                f"{setting:>22} | {1000 * sample:11.2f} | {1000 * compute:12.2f} | {1000 * loop:19.2f} | {1 / loop:8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
