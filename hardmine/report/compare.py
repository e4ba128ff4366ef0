"""`hardmine compare`: train every run of a spec with every seed, each in its own process, and
write the report.

Each run is an ordinary `python -m hardmine train PRESET OVERRIDES...` child process: its peak
memory is its own (the trainer records it in metrics.json), and a crash loses that run only (it is
reported with the tail of its output, the others go on, and the command exits non-zero at the
end). Runs are skipped when they finished before (metrics.json present and the saved config.yaml
equal to the wanted config) and resumed from their last checkpoint when they stopped half-way, so
an interrupted comparison continues where it stopped when the same command is run again.

OUT holds:
    runs/SLUG-seedN/   one run: config.yaml, log.csv, metrics.json, pr50.json, checkpoints,
                       train.log (the process's output), run.json (command, versions, timing)
    plots/, gallery/   the report's PNGs
    report.md, report.html (self-contained), results.csv, results.json
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from hardmine.config import Config, dump_yaml
from hardmine.engine.checkpoint import FINAL, LAST
from hardmine.engine.coco_eval import PR_CURVE_FILE
from hardmine.engine.evaluation import EVAL_HISTORY_FILE
from hardmine.errors import TrainingInterrupted
from hardmine.report.document import write_report
from hardmine.report.figures import make_figures
from hardmine.report.hard_examples import Example, render_example
from hardmine.report.results import (
    FAILED,
    SKIPPED,
    TRAINED,
    MethodSummary,
    RunRecord,
    format_text_table,
    summarize,
    write_results_csv,
    write_results_json,
)
from hardmine.report.sections import ReportInputs, about, build_sections, report_title
from hardmine.report.spec import CompareSpec, RunSpec, display_path

#: Lines of a failed run's output shown in the report.
ERROR_TAIL_LINES = 25
#: Seconds between looks at a running child's log.csv (progress bars).
POLL_S = 0.5
#: Packages whose versions are recorded with every run.
VERSIONED = ("hardmine", "torch", "torchvision", "numpy", "faster-coco-eval", "pillow", "matplotlib")


@dataclass
class PlannedRun:
    """One run of the comparison: a method (`run`) with one seed, its overrides and config."""

    run: RunSpec
    seed: int
    run_dir: Path
    overrides: list[str]
    cfg: Config

    @property
    def label(self) -> str:
        return f"{self.run.name} (seed {self.seed})"

    def command(self) -> str:
        """The shell command that reproduces this run on its own."""
        return shlex.join(["hardmine", "train", display_path(self.run.preset), *self.overrides])

    def saved_config(self) -> dict[str, Any] | None:
        """The config.yaml the run's folder holds, None if there is none (or it is unreadable)."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return None
        try:
            return yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            return None

    def finished(self) -> bool:
        """Trained and evaluated before with exactly this config: nothing to do."""
        return (self.run_dir / "metrics.json").is_file() and self.saved_config() == self.cfg.to_dict()

    def resumable(self) -> bool:
        """Stopped half-way with this config: `--resume` continues from the last checkpoint."""
        return (self.run_dir / LAST).is_file() and self.saved_config() == self.cfg.to_dict()


def plan_runs(spec: CompareSpec, out: Path) -> list[PlannedRun]:
    """Every (run, seed) of `spec`, method by method, with its config (validated) and folder."""
    planned = []
    for run in spec.runs:
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{run.slug}-seed{seed}"
            overrides = spec.run_overrides(run, seed, run_dir)
            planned.append(PlannedRun(run, seed, run_dir, overrides, spec.run_config(run, seed, run_dir)))
    return planned


def library_versions() -> dict[str, str]:
    """Python, the platform and the installed versions of the packages that decide a result."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def machine_description() -> str:
    """CPU model and core count, plus the GPU when CUDA is available: where the timings come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def _last_iteration(log_csv: Path) -> int:
    """The iteration of the last row of a run's log.csv (0 if none yet)."""
    with contextlib.suppress(OSError):
        lines = log_csv.read_text().strip().splitlines()
        if len(lines) > 1:
            first = lines[-1].split(",", 1)[0]
            if first.isdigit():
                return int(first)
    return 0


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    return f"(no output: {path} is missing)"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread, so both stop a run the same way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Progress:
    """The overall bar (iterations of all pending runs, with ETA) and one bar for the running run.

    Bars go to stderr and only to a terminal (tqdm's `disable=None`); a line per finished run is
    printed either way.
    """

    def __init__(self, total_iterations: int) -> None:
        self.overall = tqdm(
            total=total_iterations,
            desc="compare",
            unit="it",
            position=0,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=None,
        )

    def run_bar(self, label: str, total: int, initial: int) -> tqdm:
        return tqdm(
            total=total,
            initial=initial,
            desc=label,
            unit="it",
            position=1,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=None,
        )

    def say(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.overall.close()


#: What a run folder keeps from an earlier attempt that must not outlive a fresh start: stale
#: results would make a crashed run look finished, a stale checkpoint would be resumed.
STALE = ("metrics.json", PR_CURVE_FILE, EVAL_HISTORY_FILE, "log.csv", LAST, FINAL, "tensorboard", "run.json")


def _clear_stale(run_dir: Path) -> None:
    for name in STALE:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _write_record(
    planned: PlannedRun, argv: list[str], returncode: int | None, started: str, wall: float
) -> None:
    """RUN_DIR/run.json: how the run was trained. `wall` adds up over resumed attempts."""
    path = planned.run_dir / "run.json"
    with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError):
        wall += float(json.loads(path.read_text())["wall_s"])  # an earlier, interrupted attempt
    record = {
        "name": planned.run.name,
        "family": planned.run.family,
        "seed": planned.seed,
        "command": planned.command(),
        "argv": argv,
        "returncode": returncode,
        "started": started,
        "wall_s": round(wall, 1),
        "versions": library_versions(),
        "machine": machine_description(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


def execute(planned: PlannedRun, progress: Progress, position: str) -> tuple[int, float]:
    """Train `planned` in a child process (resuming it if it stopped half-way with the same config,
    else from scratch); returns its exit status and wall time. The child's output goes to
    RUN_DIR/train.log, its record to RUN_DIR/run.json."""
    planned.run_dir.mkdir(parents=True, exist_ok=True)
    resume = planned.resumable()
    if not resume:
        _clear_stale(planned.run_dir)
    start = _last_iteration(planned.run_dir / "log.csv") if resume else 0
    args = [sys.executable, "-m", "hardmine", "train", str(planned.run.preset), *planned.overrides]
    if resume:
        args.append("--resume")
    progress.say(
        f"[{position}] {planned.label}: {'resuming from its last checkpoint' if resume else 'training'}"
        f" ({planned.cfg.solver.max_iter} iterations) -> {planned.run_dir}"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    bar = progress.run_bar(planned.run.name, planned.cfg.solver.max_iter, start)
    done = start
    with (planned.run_dir / "train.log").open("a" if resume else "w") as log, _sigterm_as_interrupt():
        # Its own session: a Ctrl-C reaches the parent only, which then asks the child once to stop
        # (it checkpoints and exits), instead of both getting it and the child aborting on a second one.
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while child.poll() is None:
                time.sleep(POLL_S)
                now = _last_iteration(planned.run_dir / "log.csv")
                if now > done:
                    bar.update(now - done)
                    progress.overall.update(now - done)
                    done = now
                if done >= planned.cfg.solver.max_iter:
                    bar.set_postfix_str("evaluating")
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            bar.close()
            _write_record(planned, args, child.returncode, started, time.perf_counter() - t0)
            raise TrainingInterrupted(
                f"comparison interrupted during {planned.label} (stopped with a checkpoint in "
                f"{planned.run_dir} if it had begun training); run the same command again to go on: "
                "finished runs are skipped, this one resumes"
            ) from None
    bar.close()
    remaining = planned.cfg.solver.max_iter - done
    if remaining > 0:  # a failed run: its iterations will not come
        progress.overall.total -= remaining
        progress.overall.refresh()
    wall = time.perf_counter() - t0
    _write_record(planned, args, child.returncode, started, wall)
    return child.returncode, wall


def pending_iterations(planned: list[PlannedRun]) -> int:
    """Iterations still to train (runs that stopped half-way count what is left)."""
    total = 0
    for p in planned:
        if not p.finished():
            start = _last_iteration(p.run_dir / "log.csv") if p.resumable() else 0
            total += p.cfg.solver.max_iter - start
    return total


def run_all(planned: list[PlannedRun], progress: Progress) -> dict[Path, str]:
    """Train what is not finished, in order; returns each run folder's status this time:
    "skipped" (finished before), "trained" or "failed"."""
    status = {}
    for i, p in enumerate(planned, 1):
        position = f"{i}/{len(planned)}"
        if p.finished():
            progress.say(f"[{position}] {p.label}: finished before, skipped ({p.run_dir})")
            status[p.run_dir] = SKIPPED
            continue
        code, wall = execute(p, progress, position)
        ok = code == 0 and (p.run_dir / "metrics.json").is_file() and (p.run_dir / FINAL).is_file()
        status[p.run_dir] = TRAINED if ok else FAILED
        progress.say(
            f"[{position}] {p.label}: "
            + (
                f"done in {wall:.0f} s"
                if ok
                else f"FAILED (exit status {code}), see {p.run_dir / 'train.log'}"
            )
        )
    return status


def run_record(planned: PlannedRun, status: str) -> RunRecord:
    """What the report needs of a run: its metrics.json (if it succeeded), the error tail of its
    output (if it failed), and the command, versions and wall time its run.json recorded."""
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        info = json.loads((planned.run_dir / "run.json").read_text())
    metrics = None
    if status != FAILED:
        metrics = json.loads((planned.run_dir / "metrics.json").read_text())
    return RunRecord(
        name=planned.run.name,
        family=planned.run.family,
        seed=planned.seed,
        status=status,
        run_dir=str(planned.run_dir),
        command=planned.command(),
        metrics=metrics,
        wall_s=info.get("wall_s"),
        error=_tail(planned.run_dir / "train.log") if status == FAILED else None,
        versions=info.get("versions", {}),
    )


def hard_examples(
    spec: CompareSpec, planned: list[PlannedRun], records: list[RunRecord], out: Path, progress: Progress
) -> list[Example]:
    """One example per method with a successful run (its first), all on the same training image.

    Drawing one is not allowed to cost the report: a failure becomes the example's caption.
    """
    examples: list[Example] = []
    image_key = spec.gallery.image
    done: set[str] = set()
    for p, record in zip(planned, records):
        if not record.ok or p.run.name in done:
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


@dataclass
class CompareOutcome:
    """What a comparison produced: every run's record, the per-method summaries and the files."""

    out: Path
    records: list[RunRecord]
    summaries: list[MethodSummary]
    report_md: Path
    report_html: Path

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == FAILED]


def compare(spec: CompareSpec, out: Path, invocation: str) -> CompareOutcome:
    """Train every run of `spec` that has not finished in `out`, then write the report and the
    results files there. `invocation`: the command line, shown in the report to redo it."""
    out.mkdir(parents=True, exist_ok=True)
    planned = plan_runs(spec, out)
    bars = Progress(pending_iterations(planned))
    try:
        status = run_all(planned, bars)
        records = [run_record(p, status[p.run_dir]) for p in planned]
        summaries = summarize(records)
        bars.say("writing the report: plots, gallery, tables")
        inputs = ReportInputs(
            spec=spec,
            cfg=planned[0].cfg,
            records=records,
            summaries=summaries,
            figures=make_figures(records, summaries, {p.run.name: p.cfg.model.arch for p in planned}, out),
            examples=hard_examples(spec, planned, records, out, bars),
            configs={
                str(p.run_dir): (p.run_dir / "config.yaml").read_text()
                if (p.run_dir / "config.yaml").is_file()
                else dump_yaml(p.cfg)
                for p in planned
            },
            invocation=invocation,
            machine=machine_description(),
            versions=library_versions(),
            generated=dt.datetime.now().astimezone().isoformat(timespec="minutes"),
        )
    finally:
        bars.close()
    md, page = write_report(report_title(spec.title, inputs.cfg), build_sections(inputs), out)
    write_results_csv(out / "results.csv", records)
    write_results_json(out / "results.json", records, summaries, about(inputs))
    return CompareOutcome(out, records, summaries, md, page)


def format_outcome(outcome: CompareOutcome) -> str:
    """The end-of-run summary: the table per family, failed runs, and where the report is."""
    lines = [format_text_table(outcome.summaries), ""]
    for run in outcome.failed:
        lines.append(f"FAILED: {run.name} (seed {run.seed}), see {run.run_dir}/train.log")
    lines.append(f"report: {outcome.report_html} (also {outcome.report_md.name}, results.csv, results.json)")
    return "\n".join(lines)
