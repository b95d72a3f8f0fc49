"""Where the time of a workflow run goes: each job's wall time and share, per rule, the critical path, how many
jobs ran at once, and what process start-up (imports) costs, from a Snakemake log.

    python benchmarks/mini_profile.py                          # the newest complete log under .snakemake/log/
    python benchmarks/mini_profile.py .snakemake/log/X.snakemake.log

Snakemake's log gives each job's start ("[time]" then "rule NAME:" with its input and output files) and end
("[time]" then "Finished jobid: N"); times have one-second resolution. The critical path is the longest chain of
jobs through their input and output files, each weighted by its wall time.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse(log: Path) -> dict[int, dict]:
    jobs: dict[int, dict] = {}
    now = None
    current = None
    for line in log.read_text().splitlines():
        m = STAMP.match(line.strip())
        if m:
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
            current = None
            continue
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            current = {"rule": m.group(1), "start": now, "input": [], "output": [], "wildcards": ""}
            continue
        if current is not None:
            s = line.strip()
            for key in ("input", "output"):
                if s.startswith(f"{key}:"):
                    current[key] = [f.strip() for f in s[len(key) + 1 :].split(",") if f.strip()]
            if s.startswith("wildcards:"):
                current["wildcards"] = s[len("wildcards:") :].strip()
            if s.startswith("jobid:"):
                jobs[int(s.split()[1])] = current
        m = re.match(r"^Finished jobid: (\d+)", line)
        if m and int(m.group(1)) in jobs:
            jobs[int(m.group(1))]["end"] = now
    return {k: v for k, v in jobs.items() if "end" in v and v["rule"] != "all"}


def critical_path(jobs: dict[int, dict]) -> tuple[float, list[int]]:
    producer = {f: k for k, j in jobs.items() for f in j["output"]}
    best: dict[int, tuple[float, list[int]]] = {}

    def longest(k: int) -> tuple[float, list[int]]:
        if k not in best:
            j = jobs[k]
            ups = [longest(producer[f]) for f in j["input"] if f in producer and producer[f] != k]
            up = max(ups, key=lambda t: t[0], default=(0.0, []))
            best[k] = (up[0] + j["end"] - j["start"], [*up[1], k])
        return best[k]

    return max((longest(k) for k in jobs), key=lambda t: t[0], default=(0.0, []))


# the rules whose jobs build an optimizer, which imports torch._dynamo (the other compute jobs start without it:
# moe_adapters.startup)
TRAINING_RULES = {"pretrain", "train_task", "autoencoder", "cil_train"}
START_UP = {  # what a job's process runs before its first step: the CLI's import hook, the step's imports
    "evaluation": "from moe_adapters.startup import defer_dynamo; defer_dynamo(); import moe_adapters.steps.evaluate",
    "training": "from moe_adapters.startup import defer_dynamo; defer_dynamo(); import moe_adapters.steps.train, torch; "
    "torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])",
}


def import_seconds(code: str, repeats: int = 3) -> float:
    """Median wall time of a bare process that runs `code` (a job's start-up)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", nargs="?", help="a Snakemake log (default: the newest complete one)")
    ap.add_argument("--no-imports", action="store_true", help="do not measure the import time")
    args = ap.parse_args()
    if args.log:
        log = Path(args.log)
    else:
        logs = sorted(Path(".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        log = next((p for p in logs if "(100%) done" in p.read_text()), None)
        if log is None:
            sys.exit("no complete Snakemake log under .snakemake/log/")
    jobs = parse(log)
    if not jobs:
        sys.exit(f"{log}: no finished job")
    wall = max(j["end"] for j in jobs.values()) - min(j["start"] for j in jobs.values())
    busy = sum(j["end"] - j["start"] for j in jobs.values())
    print(f"{log}: {len(jobs)} jobs, wall {wall:.0f} s, job time summed {busy:.0f} s, "
          f"{busy / max(wall, 1):.2f} jobs at once on average\n")
    per = defaultdict(list)
    for j in jobs.values():
        per[j["rule"]].append(j["end"] - j["start"])
    print(f"{'rule':<20} {'jobs':>4} {'seconds':>8} {'share':>6} {'mean':>6}")
    for rule, ts in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:<20} {len(ts):>4} {sum(ts):>8.0f} {sum(ts) / busy:>6.1%} {statistics.mean(ts):>6.1f}")
    length, path = critical_path(jobs)
    print(f"\ncritical path: {length:.0f} s of the {wall:.0f} s wall time")
    for k in path:
        j = jobs[k]
        print(f"  {j['end'] - j['start']:>5.0f} s  {j['rule']} {j['wildcards']}")
    if not args.no_imports:
        imp = {kind: import_seconds(code) for kind, code in START_UP.items()}
        spent, heavy = 0.0, 0
        for j in jobs.values():
            cost = imp["training" if j["rule"] in TRAINING_RULES else "evaluation"]
            if j["end"] - j["start"] >= cost:
                spent, heavy = spent + cost, heavy + 1
        print(f"\nprocess start-up of a compute job (imports): {imp['evaluation']:.1f} s, {imp['training']:.1f} s for "
              f"a training job (its optimizer imports torch._dynamo); {heavy} jobs ran at least that long: about "
              f"{spent:.0f} s of the {busy:.0f} s job time")


if __name__ == "__main__":
    main()
