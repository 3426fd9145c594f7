"""Benchmark: Omniglot loading and episode sampling (not a test; prints a table).

    python benchmarks/bench_data.py            # uses the cache if it is there
    python benchmarks/bench_data.py --cold     # also times the first decode into a fresh cache

Write the command, the machine and the numbers next to any claim made from them.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cold", action="store_true", help="decode the archives into a fresh cache first"
    )
    args = parser.parse_args()

    from helpers import datasets
    from helpers.episodes import EpisodeSampler, omniglot_dataset

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    if args.cold:
        with tempfile.TemporaryDirectory() as folder:
            os.environ[datasets.DATA_DIR_VARIABLE] = folder
            start = time.perf_counter()
            datasets.load_omniglot(progress=False)
            print(
                f"first load (decode 32,460 PNGs, write cache): {time.perf_counter() - start:6.2f} s"
            )
            start = time.perf_counter()
            datasets.load_omniglot(progress=False)
            print(
                f"second load (from the cache):                  {time.perf_counter() - start:6.2f} s"
            )
            del os.environ[datasets.DATA_DIR_VARIABLE]
    start = time.perf_counter()
    datasets.load_omniglot(progress=False)
    print(f"load from the cache:                            {time.perf_counter() - start:6.2f} s")
    start = time.perf_counter()
    trainval = omniglot_dataset("vinyals-trainval")
    print(f"build vinyals-trainval (4,800 rotated classes):  {time.perf_counter() - start:6.2f} s")
    for n_way, k_shot, n_query in [(5, 1, 15), (20, 5, 5), (60, 5, 5)]:
        sampler = EpisodeSampler(trainval, n_way, k_shot, n_query, seed=0)
        count = 200
        start = time.perf_counter()
        for _ in range(count):
            sampler.sample()
        per = (time.perf_counter() - start) / count
        print(
            f"sample a {n_way}-way {k_shot}-shot {n_query}-query episode on the CPU:  {1000 * per:6.2f} ms"
        )


if __name__ == "__main__":
    main()
