"""The peer of workers_bench b): trivial tasks per second through Python's
concurrent.futures.ProcessPoolExecutor (what Aqueduct's users compare with).

    /usr/bin/python3 bench/process_pool_peer.py [--tasks N] [--runs R]

Prints one line per case: median tasks/s of R timed runs after a warm-up.
"""
import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor


def touch(x):
    return x


def submit_each(pool, n):
    futures = [pool.submit(touch, i) for i in range(n)]
    for f in futures:
        f.result()


def map_chunked(pool, n):
    for _ in pool.map(touch, range(n), chunksize=64):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for workers in (1, 2):
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for name, run in (("submit() each task", submit_each),
                              ("map(chunksize=64)", map_chunked)):
                run(pool, args.tasks // 4)  # warm-up (starts the workers)
                rates = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    run(pool, args.tasks)
                    rates.append(args.tasks / (time.perf_counter() - start))
                print(f"  Python ProcessPoolExecutor, {workers} worker(s), {name:<20} "
                      f"{statistics.median(rates) / 1e3:10.2f} k tasks/s  "
                      f"({min(rates) / 1e3:.2f} .. {max(rates) / 1e3:.2f})")


if __name__ == "__main__":
    main()
