"""Training steps per second of a small torch MLP with 1, 2, ... threads, on this machine as it is now.

    python benchmarks/threads.py [--seconds 5] [--repeats 2] [--max-threads N] [--json]

Each measurement is a fresh process (torch.set_num_threads before any work) training a 256-512-10 MLP on one
batch of 64 for `--seconds`. What it shows: on a machine whose cores are busy with other work, a run with as many
threads as cores stalls (an OpenMP thread that loses its core holds up every step), which is why
`target.threads: 0` leaves bot/executors/pool.py SPARE_CORES to the rest of the machine. The machine may be
shared: compare rows of one invocation, and read the load average printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import print_table

STEPS = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
start, n = time.perf_counter(), 0
while time.perf_counter() - start < float(sys.argv[2]):
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step(); n += 1
print(n / (time.perf_counter() - start))
"""


def steps_per_second(threads: int, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, str(threads), str(seconds)], capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [{"threads": t, "repeat": r, "steps_per_second": round(steps_per_second(t, args.seconds), 1),
             "load_average": round(os.getloadavg()[0], 2)}
            for r in range(args.repeats) for t in range(1, args.max_threads + 1)]
    if args.json:
        print(json.dumps({"cores": len(os.sched_getaffinity(0)), "rows": rows}))
    else:
        print_table({"threads": "threads", "repeat": "repeat", "steps_per_second": "steps/s",
                     "load_average": "load (1 min)"}, rows)


if __name__ == "__main__":
    main()
