"""`hardmine compare`: train every run of a spec with every seed, each in its own process (several at
once, or as cluster jobs: `launch`), score them with intervals (`verdicts`), optionally race them
(`racing`), and write the report.

Each run is an ordinary `python -m hardmine train PRESET OVERRIDES...` child process: its peak
memory is its own (the trainer records it in metrics.json), and a crash loses that run only (it is
reported with the tail of its output, the others go on, and the command exits non-zero at the
end). Runs are skipped when they finished before as the same run (`runs.PlannedRun.same_run`) and
resumed from their last checkpoint when they stopped half-way, so an interrupted comparison
continues where it stopped when the same command is run again.

OUT holds:
    runs/SLUG-seedN/   one run: config.yaml, log.csv, metrics.json, pr50.json, eval_history.json,
                       detections/, checkpoints, train.log (the process's output), run.json
    cluster/           submitit's job files (--launcher slurm / submitit-local)
    plots/, gallery/   the report's PNGs
    report.md, report.html (self-contained), results.csv, results.json
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hardmine.config import SEGMENTATION_ARCHS, dump_yaml
from hardmine.engine.checkpoint import FINAL
from hardmine.engine.evaluation import detections_file
from hardmine.errors import TrainingInterrupted
from hardmine.report.budget_check import BudgetCheck, budget_checks, check_spec
from hardmine.report.document import write_report
from hardmine.report.figures import make_figures
from hardmine.report.hard_examples import Example, render_example
from hardmine.report.launch import (
    STOP_WAIT_S,
    Handle,
    Launch,
    Launcher,
    LaunchOptions,
    Slot,
    make_launcher,
    train_argv,
)
from hardmine.report.racing import Elimination, RaceCost, RaceSummary, eliminate, race_cost, race_rungs
from hardmine.report.results import (
    FAILED,
    SKIPPED,
    STOPPED,
    TRAINED,
    MethodSummary,
    RunRecord,
    degenerate_output,
    format_text_table,
    read_log_columns,
    summarize,
    write_results_csv,
    write_results_json,
)
from hardmine.report.runs import (
    PlannedRun,
    clear_stale,
    last_logged_iteration,
    library_versions,
    machine_description,
    plan_runs,
    read_record,
    write_record,
)
from hardmine.report.scores import Scorer
from hardmine.report.sections import ReportInputs, about, build_sections, report_title
from hardmine.report.spec import CompareSpec
from hardmine.report.verdicts import FamilyVerdicts, family_verdicts

#: Lines of a failed run's output shown in the report.
ERROR_TAIL_LINES = 25
#: Seconds between looks at the running children (exit status, log.csv for the progress bars).
POLL_S = 0.5


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    return f"(no output: {path} is missing)"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so both stop the runs the same way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Progress:
    """The overall bar (iterations of all pending runs, with ETA) and one bar per running run.

    Bars go to stderr and only to a terminal (tqdm's `disable=None`); a line per started and
    finished run is printed either way.
    """

    def __init__(self) -> None:
        self.overall = tqdm(
            total=0, desc="compare", unit="it", position=0, dynamic_ncols=True, file=sys.stderr, disable=None
        )
        self._free_positions: list[int] = []
        self._next_position = 1  # bars of running runs below the overall one, a free line reused

    def add(self, iterations: int) -> None:
        """More iterations to train (a phase of a race, or the whole comparison)."""
        self.overall.total += iterations
        self.overall.refresh()

    def run_bar(self, label: str, total: int, initial: int) -> tuple[tqdm, int]:
        """A bar for a run that starts, and its line (give both back to `close_bar`)."""
        if self._free_positions:
            position = self._free_positions.pop(0)
        else:
            position, self._next_position = self._next_position, self._next_position + 1
        bar = tqdm(
            total=total,
            initial=initial,
            desc=label,
            unit="it",
            position=position,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=None,
        )
        return bar, position

    def close_bar(self, bar: tqdm, position: int) -> None:
        bar.close()
        self._free_positions = sorted([*self._free_positions, position])

    def say(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.overall.close()


@dataclass
class Task:
    """Train `planned` to `stop_at` (a rung of a race) or, when None, to its budget."""

    planned: PlannedRun
    stop_at: int | None = None

    @property
    def target(self) -> int:
        return self.stop_at or self.planned.budget


@dataclass
class Running:
    """A task that has been started: where, its handle, its bar, and what run.json will record."""

    task: Task
    slot: Slot
    handle: Handle
    bar: Any
    line: int
    done: int
    t0: float
    facts: dict[str, Any] = field(default_factory=dict)


def launch_overrides(planned: PlannedRun, slot: Slot, stop_at: int | None) -> list[str]:
    """What the launch adds to a run's overrides: its share of the CPU threads (unless its config
    sets train.num_threads) and, in a race, where to stop. Neither changes which run it is."""
    extra = []
    if planned.cfg.train.num_threads == 0 and slot.threads:
        extra.append(f"train.num_threads={slot.threads}")
    if stop_at is not None:
        extra.append(f"train.stop_at={stop_at}")
    return extra


def _start(task: Task, slot: Slot, launcher: Launcher, progress: Progress, counter: str) -> Running:
    p = task.planned
    p.run_dir.mkdir(parents=True, exist_ok=True)
    resume = p.resumable()
    start = last_logged_iteration(p.run_dir / "log.csv") if resume else 0
    handle = launcher.attach(p.run_dir)
    facts: dict[str, Any] = {"launcher": launcher.name, "target_iteration": task.target}
    if handle is not None:
        what = "waiting for its job, still running from an earlier invocation"
    else:
        if not resume:
            clear_stale(p.run_dir)
        extra = launch_overrides(p, slot, task.stop_at)
        argv = train_argv(p.run.preset, [*p.overrides, *extra], resume, gpus=len(slot.gpus))
        handle = launcher.start(Launch(argv, p.run_dir / "train.log", p.run_dir, append=resume), slot)
        threads = [e for e in extra if e.startswith("train.num_threads=")]
        facts.update(command=p.command(threads), argv=argv, resources=slot.describe())
        what = "resuming from its last checkpoint" if resume else "training"
    facts.update(
        handle=handle.description, started=dt.datetime.now().astimezone().isoformat(timespec="seconds")
    )
    progress.say(
        f"[{counter}] {p.label}: {what} to iteration {task.target} of {p.budget} on {slot.describe()} "
        f"({handle.description}) -> {p.run_dir}"
    )
    bar, line = progress.run_bar(p.run.name, task.target, start)
    return Running(task, slot, handle, bar, line, start, time.perf_counter(), facts)


def _follow(r: Running, progress: Progress) -> None:
    """Move the bars to the iteration the run's log.csv has reached."""
    now = min(last_logged_iteration(r.task.planned.run_dir / "log.csv"), r.task.target)
    if now > r.done:
        r.bar.update(now - r.done)
        progress.overall.update(now - r.done)
        r.done = now
    if r.done >= r.task.target:
        r.bar.set_postfix_str("evaluating")


def _end(r: Running, code: int | None, progress: Progress) -> None:
    progress.close_bar(r.bar, r.line)
    remaining = r.task.target - r.done
    if remaining > 0:  # a failed (or interrupted) run: its iterations will not come
        progress.overall.total -= remaining
        progress.overall.refresh()
    write_record(r.task.planned, {**r.facts, "returncode": code}, time.perf_counter() - r.t0)


def run_tasks(tasks: list[Task], launcher: Launcher, progress: Progress) -> None:
    """Run `tasks`, at most `launcher.capacity` at once (a cluster: all), in order as slots free up
    (what each achieved is in its folder: `PlannedRun.finished` / `reached`). Ctrl-C / SIGTERM asks
    every running run to stop with a checkpoint and raises TrainingInterrupted (cluster jobs go on;
    a re-run waits for them)."""
    progress.add(sum(t.target - t.planned.trained_iterations() for t in tasks))
    pending = deque(tasks)
    free = list(range(launcher.capacity)) if launcher.capacity is not None else None
    running: list[Running] = []
    started = 0
    with _sigterm_as_interrupt():
        try:
            while pending or running:
                while pending and (free is None or free):
                    index = free.pop(0) if free is not None else started
                    started += 1
                    running.append(
                        _start(
                            pending.popleft(),
                            launcher.slot(index),
                            launcher,
                            progress,
                            f"{started}/{len(tasks)}",
                        )
                    )
                time.sleep(POLL_S)
                for r in list(running):
                    _follow(r, progress)
                    code = r.handle.poll()
                    if code is None:
                        continue
                    running.remove(r)
                    if free is not None:
                        free = sorted([*free, r.slot.index])
                    _follow(r, progress)
                    _end(r, code, progress)
                    _say_done(r, code, progress)
        except KeyboardInterrupt:
            for r in running:
                r.handle.interrupt()
            for r in running:
                _end(r, r.handle.wait(STOP_WAIT_S), progress)
            labels = ", ".join(r.task.planned.label for r in running) or "no run"
            raise TrainingInterrupted(
                f"comparison interrupted while training {labels} (each stops with a checkpoint in its "
                "folder once it has begun training; cluster jobs go on); run the same command again to go "
                "on: finished runs are skipped, the others resume"
            ) from None


def _say_done(r: Running, code: int, progress: Progress) -> None:
    p, wall = r.task.planned, time.perf_counter() - r.t0
    reached = p.finished() if r.task.stop_at is None else p.reached(r.task.stop_at)
    if code == 0 and reached:
        progress.say(f"{p.label}: reached iteration {r.task.target} in {wall:.0f} s")
    else:
        progress.say(f"{p.label}: FAILED (exit status {code}), see {p.run_dir / 'train.log'}")


# --- the comparison --------------------------------------------------------------------------------


@dataclass
class CompareOutcome:
    """What a comparison produced: every run's record, the per-method summaries, the verdicts, the
    race (if any) and the files."""

    out: Path
    records: list[RunRecord]
    summaries: list[MethodSummary]
    verdicts: list[FamilyVerdicts]
    race: RaceSummary | None
    report_md: Path
    report_html: Path
    #: `--budget-check`: each family's baseline at the budget and at 1.5x it, and the check runs.
    checks: list[BudgetCheck] = field(default_factory=list)
    check_records: list[RunRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in [*self.records, *self.check_records] if r.status == FAILED]


def _race(
    spec: CompareSpec,
    planned: list[PlannedRun],
    launcher: Launcher,
    progress: Progress,
    scorer: Scorer,
    status: dict[Path, str],
) -> tuple[list[PlannedRun], list[int], list[Elimination]]:
    """Train every run to each rung in turn and stop the methods clearly worse there; returns the
    runs still in the race, the rungs and the eliminations. Fills `status` with the runs that
    failed or stopped."""
    rungs = race_rungs(spec.budget, spec.eval_period)
    baselines = {r.family: spec.baseline_of(r.family) for r in spec.runs}
    alive, eliminations = list(planned), []
    for rung in rungs:
        todo = [p for p in alive if not p.reached(rung)]
        progress.say(f"race: {len(todo)} run(s) to iteration {rung} ({len(alive) - len(todo)} there before)")
        run_tasks([Task(p, rung) for p in todo], launcher, progress)
        for p in todo:
            if not p.reached(rung):
                status[p.run_dir] = FAILED
        alive = [p for p in alive if p.run_dir not in status]
        found = eliminate(scorer.methods(alive, lambda p, at=rung: at), baselines, rung)
        for e in found:
            progress.say(f"race: stopped at iteration {rung}: {e.against_leader.sentence()}")
        stopped = {e.method for e in found}
        for p in alive:
            if p.run.name in stopped:
                status[p.run_dir] = STOPPED
        alive = [p for p in alive if p.run.name not in stopped]
        eliminations += found
    return alive, rungs, eliminations


def compare(
    spec: CompareSpec,
    out: Path,
    invocation: str,
    launch: LaunchOptions | None = None,
    race: bool = False,
    budget_check: bool = False,
) -> CompareOutcome:
    """Train every run of `spec` that has not finished in `out` (where `launch` says), racing them
    if `race`, and with `budget_check` each family's baseline at 1.5x the budget too
    (`budget_check.check_spec`), then write the report and the results files there. `invocation`: the
    command line, shown in the report to redo it. Every option is checked before any training."""
    planned = plan_runs(spec, out)
    checks = plan_runs(check_spec(spec), out) if budget_check else []
    launcher = make_launcher(launch or LaunchOptions(), [p.cfg for p in [*planned, *checks]], out)
    if race:
        race_rungs(spec.budget, spec.eval_period)  # its errors before any training too
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    scorer = Scorer()
    status: dict[Path, str] = {}
    before = {p.run_dir for p in [*planned, *checks] if p.finished()}
    progress.say(f"runs: {launcher.describe()}")
    try:
        alive, rungs, eliminations = list(planned), [], []
        if race:
            alive, rungs, eliminations = _race(spec, planned, launcher, progress, scorer, status)
        alive += checks  # the check runs train with the last of the comparison's (not raced)
        todo = [p for p in alive if not p.finished()]
        for p in alive:
            if p.finished() and p.run_dir in before:
                progress.say(f"{p.label}: finished before, skipped ({p.run_dir})")
        run_tasks([Task(p) for p in todo], launcher, progress)
        for p in alive:
            status[p.run_dir] = (SKIPPED if p.run_dir in before else TRAINED) if p.finished() else FAILED
        race_summary = None
        if race:
            race_summary = RaceSummary(rungs, eliminations, _race_cost(planned, status, eliminations))
        records = [run_record(p, status[p.run_dir], race_summary) for p in planned]
        check_records = [run_record(p, status[p.run_dir]) for p in checks]
        summaries = summarize(records)
        finished = [p for p in planned if status[p.run_dir] in (TRAINED, SKIPPED)]
        verdicts = _verdicts(spec, finished, scorer)
        checked = [p for p in checks if status[p.run_dir] in (TRAINED, SKIPPED)]
        budget = budget_checks(spec, finished, checked, scorer) if checks else []
        progress.say("writing the report: plots, gallery, tables")
        inputs = ReportInputs(
            spec=spec,
            cfg=planned[0].cfg,
            records=records,
            summaries=summaries,
            verdicts=verdicts,
            race=race_summary,
            figures=make_figures(records, summaries, {p.run.name: p.cfg.model.arch for p in planned}, out),
            examples=hard_examples(spec, planned, records, out, progress),
            configs={
                str(p.run_dir): (p.run_dir / "config.yaml").read_text()
                if (p.run_dir / "config.yaml").is_file()
                else dump_yaml(p.cfg)
                for p in [*planned, *checks]
            },
            invocation=invocation,
            launcher=launcher.describe(),
            machine=machine_description(),
            versions=library_versions(),
            generated=dt.datetime.now().astimezone().isoformat(timespec="minutes"),
            checks=budget,
            check_records=check_records,
        )
    finally:
        progress.close()
    md, page = write_report(report_title(spec.title, inputs.cfg), build_sections(inputs), out)
    write_results_csv(out / "results.csv", records)
    extra = {"verdicts": [asdict(v) for v in verdicts]}
    if race_summary is not None:
        extra["race"] = {**asdict(race_summary), "saved_share": race_summary.cost.saved_share}
    if checks:
        extra["budget_check"] = {
            "families": [{**asdict(c), "reading": c.reading} for c in budget],
            "runs": [asdict(r) for r in check_records],
        }
    write_results_json(out / "results.json", records, summaries, about(inputs), extra)
    return CompareOutcome(out, records, summaries, verdicts, race_summary, md, page, budget, check_records)


def _verdicts(spec: CompareSpec, finished: list[PlannedRun], scorer: Scorer) -> list[FamilyVerdicts]:
    """Per family, the finished methods against its baseline at the budget."""
    families = scorer.methods(finished, lambda p: p.budget)
    return [family_verdicts(methods, spec.baseline_of(family)) for family, methods in families.items()]


def _seconds_per_iter(planned: PlannedRun) -> float:
    """The run's training time per iteration so far (log.csv's last `time_per_iter`; 0 if none)."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        column = read_log_columns(planned.run_dir / "log.csv", ["time_per_iter"])["time_per_iter"]
        return float(column[np.isfinite(column)][-1])
    return 0.0


def _race_cost(
    planned: list[PlannedRun], status: dict[Path, str], eliminations: list[Elimination]
) -> RaceCost:
    rung_of = {e.method: e.rung for e in eliminations}
    stopped = [(rung_of[p.run.name], _seconds_per_iter(p)) for p in planned if status[p.run_dir] == STOPPED]
    return race_cost(planned[0].budget, stopped, len(planned))


def run_record(planned: PlannedRun, status: str, race: RaceSummary | None = None) -> RunRecord:
    """What the report needs of a run: its metrics.json (if it finished; a stopped run: its last
    evaluation), the error tail of its output (if it failed), and what its run.json recorded."""
    info = read_record(planned.run_dir)
    metrics, stopped_at = None, None
    if status in (TRAINED, SKIPPED):
        metrics = json.loads((planned.run_dir / "metrics.json").read_text())
    elif status == STOPPED and race is not None:
        stopped_at = race.stopped_at(planned.run.name)
        entry = planned.evaluations().get(stopped_at or -1, {})
        metrics = {k: v for k, v in entry.items() if k != "iteration"}
        metrics.update(iterations=stopped_at, seconds_per_iter=_seconds_per_iter(planned))
    return RunRecord(
        name=planned.run.name,
        family=planned.run.family,
        seed=planned.seed,
        status=status,
        run_dir=str(planned.run_dir),
        command=info.get("command") or planned.command(),
        metrics=metrics,
        wall_s=info.get("wall_s"),
        error=_tail(planned.run_dir / "train.log") if status == FAILED else None,
        versions=info.get("versions", {}),
        stopped_at=stopped_at,
        degenerate=_degenerate(planned, metrics),
    )


def _degenerate(planned: PlannedRun, metrics: dict[str, Any] | None) -> str | None:
    """`degenerate_output` of a detector run's last evaluation (None for segmentation, or where
    its detections were not kept or cannot be read)."""
    if metrics is None or planned.cfg.model.arch in SEGMENTATION_ARCHS:
        return None
    path = detections_file(planned.run_dir, int(metrics.get("iterations") or planned.cfg.solver.max_iter))
    try:
        detections = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return degenerate_output(detections) if isinstance(detections, list) else None


def hard_examples(
    spec: CompareSpec, planned: list[PlannedRun], records: list[RunRecord], out: Path, progress: Progress
) -> list[Example]:
    """One example per method with a finished run (its first), all on the same training image.

    Drawing one is not allowed to cost the report: a failure becomes the example's caption.
    """
    examples: list[Example] = []
    image_key = spec.gallery.image
    done: set[str] = set()
    for p, record in zip(planned, records):
        if record.status not in (TRAINED, SKIPPED) or p.run.name in done:
            continue
        done.add(p.run.name)
        try:
            example, image_id = render_example(
                p.run.name,
                p.run_dir / FINAL,
                image_key,
                spec.gallery.top_k,
                out / "gallery" / f"{p.run.slug}.png",
            )
        except Exception as exc:  # any failure: reported in the caption, the report goes on
            progress.say(f"gallery: {p.label} could not be drawn: {type(exc).__name__}: {exc}")
            example = Example(p.run.name, None, f"could not be drawn: {type(exc).__name__}: {exc}")
        else:
            image_key = str(image_id)  # pin the first method's image for all the others
            example.path = example.path.relative_to(out) if example.path else None
        examples.append(example)
    return examples


def format_outcome(outcome: CompareOutcome) -> str:
    """The end-of-run summary: the table per family, the verdicts, the race, failed runs, and
    where the report is."""
    lines = [format_text_table(outcome.summaries), ""]
    for verdicts in outcome.verdicts:
        if verdicts.leader:
            lines.append(f"{verdicts.family}: {verdicts.leader}")
        lines += [f"  {c.sentence()}" for c in verdicts.comparisons]
    if outcome.race is not None:
        for e in outcome.race.eliminations:
            lines.append(f"race: stopped at iteration {e.rung}: {e.against_leader.sentence()}")
        lines.append(f"race: {outcome.race.cost.describe()}")
    lines += [f"budget check, {c.sentence()}" for c in outcome.checks]
    for run in outcome.failed:
        lines.append(f"FAILED: {run.name} (seed {run.seed}), see {run.run_dir}/train.log")
    lines.append(f"report: {outcome.report_html} (also {outcome.report_md.name}, results.csv, results.json)")
    return "\n".join(lines)
