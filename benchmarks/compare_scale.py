"""`hardmine compare` at scale: parallel runs against sequential ones, and a race against the full
comparison, on a spec (default: configs/compare/default.yaml).

    python -m benchmarks.compare_scale jobs [--budget N] [--jobs 2] [--rounds 2] [--out DIR] [SPEC]
    python -m benchmarks.compare_scale race [--budget N] [--jobs 2] [--out DIR] [SPEC]

`jobs`: the comparison sequentially (`--jobs 1 train.num_threads=1`: one run at a time on one
thread, what docs/compare.md recommends on a shared CPU) and with `--jobs N` (N runs at once, cores
/ N threads each), alternating A B B A ... so that a change of the machine's load hits both alike;
every comparison trains from scratch into its own folder. It prints the wall time of each, the
ratio of the medians, and whether every run got the same metrics (to the digit) both ways. Last
line: `jobs_time_ratio=R same_results=True|False`.

`race`: the comparison trained to the budget (`--jobs N`) and the same with `--race`, each from
scratch. It prints both wall times, the iterations the race trained, each family's winner (the
highest mean AP) in both, and whether the runs the race finished got the same AP as in the full
comparison. Last line: `race_time_ratio=R same_winners=True|False iterations_saved=S`.

Both print the load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hardmine.report.spec import DEFAULT_SPEC

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_compare(spec: Path, out: Path, flags: list[str]) -> float:
    """Wall seconds of `hardmine compare SPEC FLAGS --out OUT` (from scratch); fails loudly."""
    if out.exists():
        raise SystemExit(f"{out} exists; give a fresh --out")
    command = [sys.executable, "-m", "hardmine", "compare", str(spec), *flags, "--out", str(out)]
    print("$", " ".join(command[1:]), f"(load {load()})", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    wall = time.perf_counter() - start
    if out.exists():
        (out / "compare.log").write_text(done.stdout)
    if done.returncode != 0:
        print(done.stdout[-3000:])
        raise SystemExit(f"hardmine compare exited with {done.returncode}")
    print(f"  {wall:.0f} s", flush=True)
    return wall


def results(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(method, seed) -> its row of results.csv."""
    with (out / "results.csv").open(newline="") as fh:
        return {(r["name"], r["seed"]): r for r in csv.DictReader(fh)}


def winners(out: Path) -> dict[str, str]:
    """Per family, the method with the highest mean AP among those trained to the budget."""
    data = json.loads((out / "results.json").read_text())
    best: dict[str, tuple[float, str]] = {}
    for m in data["methods"]:
        mean = m["stats"]["AP"]["mean"]
        if m.get("stopped_at") is None and mean is not None:
            if m["family"] not in best or mean > best[m["family"]][0]:
                best[m["family"]] = (mean, m["name"])
    return {family: name for family, (_, name) in best.items()}


def cmd_jobs(args: argparse.Namespace, spec: Path, base: list[str]) -> None:
    sequential = ["train.num_threads=1", *base, "--jobs", "1"]  # KEY=VALUE before the options
    parallel = [*base, "--jobs", str(args.jobs)]
    order = ["seq", "par", "par", "seq"] * ((args.rounds + 1) // 2)
    order = order[: 2 * args.rounds]
    walls: dict[str, list[float]] = {"seq": [], "par": []}
    outs = []
    for i, kind in enumerate(order):
        out = args.out / f"{kind}{i}"
        walls[kind].append(run_compare(spec, out, sequential if kind == "seq" else parallel))
        outs.append(out)
    reference = results(outs[0])
    same = all(
        all(results(o)[key][m] == row[m] for m in METRICS) for o in outs[1:] for key, row in reference.items()
    )
    for kind in ("seq", "par"):
        print(f"{kind}: " + ", ".join(f"{w:.0f} s" for w in walls[kind]))
    ratio = statistics.median(walls["par"]) / statistics.median(walls["seq"])
    print(f"load after: {load()}")
    print(f"jobs_time_ratio={ratio:.3f} same_results={same}")


def cmd_race(args: argparse.Namespace, spec: Path, base: list[str]) -> None:
    flags = [*base, "--jobs", str(args.jobs)]
    full_out, race_out = args.out / "full", args.out / "race"
    full = run_compare(spec, full_out, flags)
    raced = run_compare(spec, race_out, [*flags, "--race"])
    race = json.loads((race_out / "results.json").read_text())["race"]
    full_rows, race_rows = results(full_out), results(race_out)
    finished = [k for k, r in race_rows.items() if r["status"] in ("trained", "skipped")]
    same_ap = all(race_rows[k]["AP"] == full_rows[k]["AP"] for k in finished)
    for e in race["eliminations"]:
        print(f"stopped at {e['rung']}: {e['method']} (vs {e['against_leader']['baseline']})")
    print(f"full winners: {winners(full_out)}; race winners: {winners(race_out)}")
    print(f"the race's finished runs have the full comparison's AP: {same_ap}")
    cost = race["cost"]
    print(f"iterations: race {cost['trained']} of {cost['full']}")
    print(f"wall: full {full:.0f} s, race {raced:.0f} s")
    print(f"load after: {load()}")
    print(
        f"race_time_ratio={raced / full:.3f} same_winners={winners(full_out) == winners(race_out)} "
        f"iterations_saved={cost['full'] - cost['trained']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("jobs", "race"))
    parser.add_argument("spec", nargs="?", default=str(DEFAULT_SPEC))
    parser.add_argument("--budget", type=int, help="iterations per run (default: the spec's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="jobs: pairs of comparisons (A B B A ...)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/compare_scale"))
    args = parser.parse_args()
    base = ["--budget", str(args.budget)] if args.budget else []
    print(f"load before: {load()}")
    (cmd_jobs if args.what == "jobs" else cmd_race)(args, Path(args.spec), base)


if __name__ == "__main__":
    main()
