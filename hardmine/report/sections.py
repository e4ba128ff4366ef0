"""The comparison report's content: its sections, in order, as document blocks (see
`hardmine.report.document`), from the runs' results, the figures and the gallery.

Sections: the setup in one paragraph; a results table per detector family; the verdicts against
each family's baseline, with their intervals; the race (`--race`); failed runs with the end of
their output; the plots; the hard-example gallery; and how to reproduce every run (its command,
its full config, the library versions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hardmine.config import Config
from hardmine.report.budget_check import FACTOR, BudgetCheck
from hardmine.report.document import (
    Block,
    BulletList,
    Code,
    Details,
    Figure,
    Gallery,
    Heading,
    Paragraph,
    Table,
)
from hardmine.report.figures import FigureFile
from hardmine.report.hard_examples import Example
from hardmine.report.racing import RaceSummary
from hardmine.report.results import (
    FAILED,
    SEGMENTATION_FAMILY,
    MethodSummary,
    RunRecord,
    families,
    seed_rows,
    table_rows,
)
from hardmine.report.spec import CompareSpec, display_path
from hardmine.report.verdicts import CONFIDENCE, FamilyVerdicts, Interval, MethodEstimate, PairedDifference

FIGURE_TITLES = {
    "loss": "Training loss",
    "fg_share": "Foreground share of the classification loss",
    "ap_curve": "AP during training",
    "ap": "AP per method",
    "pr50": "Precision-recall at IoU 0.5",
}


@dataclass
class ReportInputs:
    """Everything the report shows. `configs`: each run folder's config.yaml text; `cfg`: the first
    run's config (for the data and batch size, which all runs share unless the spec says otherwise)."""

    spec: CompareSpec
    cfg: Config
    records: list[RunRecord]
    summaries: list[MethodSummary]
    verdicts: list[FamilyVerdicts]
    race: RaceSummary | None
    figures: list[FigureFile]
    examples: list[Example]
    configs: dict[str, str]
    invocation: str
    launcher: str
    machine: str
    versions: dict[str, str]
    generated: str
    #: `--budget-check`: each family's baseline at the budget and at 1.5x it, and the check runs.
    checks: list[BudgetCheck] = field(default_factory=list)
    check_records: list[RunRecord] = field(default_factory=list)


def data_name(cfg: Config) -> str:
    """A short name of the data a run trains on, for titles: the built-in dataset or the train file."""
    d = cfg.data
    if not d.train:
        return "the built-in dataset"
    return f"`{d.train}`" if d.val in ("", d.train) else f"`{d.train}` / `{d.val}`"


def report_title(title: str, cfg: Config) -> str:
    """The spec's title followed by the data the runs used (no run trusts a title to say it)."""
    return f"{title}, on {data_name(cfg)}"


def describe_data(cfg: Config) -> str:
    d = cfg.data
    if not d.train:
        return (
            f"the built-in dataset ({d.synth_train} training / {d.synth_val} validation images, "
            f"seed {d.synth_seed}, `{d.synth_dir}`)"
        )
    return f"`{d.train}` (training) and `{d.val}` (validation)"


def _setup(r: ReportInputs) -> list[Block]:
    seeds = r.spec.seeds
    return [
        Paragraph(
            f"{len(r.spec.runs)} methods x {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
            f"({', '.join(map(str, seeds))}), {r.spec.budget} training iterations each (batch "
            f"{r.cfg.data.batch_size}), on {describe_data(r.cfg)}; evaluated on the validation set with "
            f"COCO metrics{_evaluations(r.spec)}. Spec `{display_path(r.spec.source)}`; generated "
            f"{r.generated} by `{r.invocation}` on {r.machine}; runs: {r.launcher}."
        )
    ]


def _evaluations(spec: CompareSpec) -> str:
    if not spec.evaluations:
        return ""
    return f" at the end and every {spec.eval_period} iterations during training"


def _results(r: ReportInputs) -> list[Block]:
    blocks: list[Block] = [
        Heading("Results"),
        Paragraph(
            (
                "AP (IoU 0.5:0.95), AP50, AP75, APs / APm / APl (small, medium, large objects) and AR@100 "
                "on the validation set"
                if any(s.family != SEGMENTATION_FAMILY for s in r.summaries)
                else "mIoU and pixel accuracy on the validation set"
            )
            + ", in percent: mean ± std over seeds (no ± with one seed; – where no "
            "ground truth falls in the range). s/iter and images/s: training speed of each run with "
            "the resources it had (see Setup: several runs at once share the machine); peak memory: the "
            "training process's peak resident memory (on a GPU: peak allocated CUDA memory). A method "
            "a race stopped shows its evaluation where it stopped."
        ),
    ]
    verdicts = {v.family: v for v in r.verdicts}
    for family, members in families(r.summaries).items():
        header, rows = table_rows(members)
        blocks.append(Heading(family, 3))
        if family == SEGMENTATION_FAMILY:
            blocks.append(
                Paragraph(
                    "Segmentation is scored by mIoU (the mean over background and the classes of "
                    "each class's intersection over union of predicted and true pixels, over the whole "
                    "validation set; torchmetrics) and pixel accuracy, in percent; per-class IoU is in "
                    "each run's metrics.json and in results.csv."
                )
            )
        blocks.append(Table(header, rows))
        blocks.extend(_seed_blocks(members, r.records))
        blocks.extend(_verdict_blocks(verdicts.get(family), members, r))
    failed = [run for run in [*r.records, *r.check_records] if run.status == FAILED]
    if failed:
        blocks.append(Heading("Failed runs"))
        for run in failed:
            blocks += [
                Paragraph(
                    f"{run.name}, seed {run.seed} (command under Reproduce): the end of its output, "
                    f"`{run.run_dir}/train.log`:"
                ),
                Code(run.error or "", "text"),
            ]
    return blocks


def _seed_blocks(members: list[MethodSummary], records: list[RunRecord]) -> list[Block]:
    """The family's headline metric seed by seed, with a word on runs whose output is degenerate
    (with one seed, shown only where a run is)."""
    table = seed_rows(members, records)
    if table is None:
        return []
    own = [run for run in records if run.name in {m.name for m in members}]
    sentences = []
    if len({run.seed for run in own}) > 1:
        sentences.append(
            "Seed by seed: a mean with a wide ± often hides one seed that failed to learn rather than "
            "an even spread."
        )
    if any(run.degenerate for run in own):
        sentences.append(
            "In brackets, runs whose final detections show a detector that does not work: none "
            "above the test score threshold (the classifier never left its prior), or one score per "
            "class for every detection (its output no longer depends on the image: a collapsed head)."
        )
    return [Paragraph(" ".join(sentences)), Table(*table)]


def _ci(interval: Interval | None) -> str:
    return interval.format() if interval is not None else "–"


def _estimate_row(e: MethodEstimate, diff: PairedDifference | None, baseline: bool) -> list[str]:
    change = "baseline" if baseline else "–"
    verdict = ""
    if diff is not None:
        change = f"{100 * diff.difference:+.1f} ({diff.interval.format(signed=True)})"
        verdict = diff.verdict
    return [
        e.name,
        f"{e.seeds} x {e.images}",
        f"{100 * e.mean:.1f}",
        _ci(e.seed_interval),
        _ci(e.image_interval),
        change,
        verdict,
    ]


def _verdict_blocks(v: FamilyVerdicts | None, members: list[MethodSummary], r: ReportInputs) -> list[Block]:
    """The family's verdicts: a table of intervals and differences to the baseline, the verdicts in
    words, and what may be said about the leader."""
    stopped = [
        e for e in (r.race.eliminations if r.race is not None else []) if e.family == members[0].family
    ]
    if v is None or len(v.estimates) + len(stopped) < 2:
        if len([m for m in members if m.seeds and m.stopped_at is None]) > 1:
            return [
                Paragraph(
                    "No verdicts: the finished runs kept no detections (segmentation: per-image "
                    "results) of their final evaluation."
                )
            ]
        return []
    level = f"{CONFIDENCE:.0%}"
    diffs = {d.method: d for d in v.comparisons}
    rows = [_estimate_row(e, diffs.get(e.name), e.name == v.baseline) for e in v.estimates]
    for e in stopped:
        d = e.against_leader
        rows.append(
            [e.method, "–", "–", "–", "–", "–", f"stopped at {e.rung}: {d.verdict} than {d.baseline}"]
        )
    header = [
        "method",
        "seeds x images",
        v.metric,
        f"{level} CI, seeds (t)",
        f"{level} CI, images",
        f"{v.metric} - {v.baseline} ({level} CI)",
        "verdict",
    ]
    blocks: list[Block] = [
        Paragraph(
            f"Verdicts against {v.baseline}, in {v.metric} points: the mean over seeds with its "
            "Student-t interval over seeds (two seeds or more) and its bootstrap interval over the "
            "validation images; the "
            f"paired difference to {v.baseline} (same seeds, same images) with its two-stage bootstrap "
            "interval (seeds, then images). Better or worse only where that interval excludes 0."
        ),
        Table(header, rows),
    ]
    sentences = [d.sentence() + "." for d in v.comparisons]
    sentences += [
        f"{e.method}: stopped by the race at iteration {e.rung}, {e.against_leader.sentence()}."
        for e in stopped
    ]
    if sentences:
        blocks.append(BulletList(sentences))
    if v.leader:
        names = ", ".join(e.method for e in stopped)
        among = f" (Among the methods trained to the budget; the race stopped {names}.)" if stopped else ""
        blocks.append(Paragraph(v.leader + among))
    return blocks


def _race(r: ReportInputs) -> list[Block]:
    if r.race is None:
        return []
    race = r.race
    rungs = ", ".join(map(str, race.rungs))
    blocks: list[Block] = [
        Heading("Race"),
        Paragraph(
            f"Successive halving over the budget of {r.spec.budget} iterations: every run trained to "
            f"iteration {rungs} in turn and was scored there; a method stopped when the paired "
            f"{CONFIDENCE:.0%} interval of its AP minus that of its family's leader lay below 0 (the "
            "baseline always runs on); the others resumed from their checkpoints. The race "
            f"{race.cost.describe()}."
        ),
    ]
    if race.eliminations:
        rows = [[e.family, e.method, str(e.rung), e.against_leader.sentence()] for e in race.eliminations]
        blocks.append(Table(["family", "method", "stopped at", "at that iteration"], rows))
    else:
        blocks.append(Paragraph("No method was clearly worse at any rung: every run trained to the budget."))
    return blocks


def _budget_check(r: ReportInputs) -> list[Block]:
    """Each family's baseline at the budget and at 1.5x it (`--budget-check`)."""
    if not r.checks:
        return []
    longer = r.checks[0].longer
    metric = next((c.difference.metric for c in r.checks if c.difference), "AP")
    rows = [
        [
            c.family,
            c.baseline,
            _estimate_cell(c.at_budget),
            _estimate_cell(c.at_longer),
            f"{100 * c.difference.difference:+.1f} ({c.difference.interval.format(signed=True)})"
            if c.difference
            else "–",
            c.reading,
        ]
        for c in r.checks
    ]
    return [
        Heading("Budget check"),
        Paragraph(
            f"Is {r.spec.budget} iterations where the models stop improving? Each family's baseline "
            f"trained again with the same seeds for {longer} iterations ({FACTOR:g}x the budget; a step "
            f"schedule's steps at the same fractions of it), and its {metric} there minus its {metric} at "
            f"the budget, paired by seed and validation image, with the {CONFIDENCE:.0%} interval of the "
            "verdicts. A baseline that still gains clearly says the verdicts above rank the methods early "
            "in training, not where they end. In brackets: the t interval over seeds (two or more)."
        ),
        Table(
            [
                "family",
                "baseline",
                f"{metric} at {r.spec.budget}",
                f"{metric} at {longer}",
                f"difference ({CONFIDENCE:.0%} CI)",
                "reading",
            ],
            rows,
        ),
    ]


def _estimate_cell(e: MethodEstimate | None) -> str:
    if e is None:
        return "–"
    return f"{100 * e.mean:.1f}" + (f" ({_ci(e.seed_interval)})" if e.seed_interval is not None else "")


def _figures(r: ReportInputs) -> list[Block]:
    if not r.figures:
        return [Heading("Plots"), Paragraph("No run finished, so there is nothing to plot.")]
    blocks: list[Block] = []
    for figure in r.figures:
        title = figure.title or FIGURE_TITLES[figure.key]
        blocks += [Heading(title), Figure(figure.path, figure.caption, alt=title)]
    return blocks


def _gallery(r: ReportInputs) -> list[Block]:
    intro = Paragraph(
        "The same training image for every method, with the candidates of the head whose sampling is "
        "compared, from each method's trained model (its first successful seed). Methods that select "
        "candidates show their selection; methods that train on every candidate (sampler `none`) show "
        f"the {r.spec.gallery.top_k} with the highest classification loss, the ones their loss weights "
        "most. A segmentation method shows the image's ground truth, its prediction, the loss of "
        "every pixel and the pixels its pixel sampler keeps. Each caption says what is drawn."
    )
    drawn = [Figure(e.path, e.caption, alt=f"hard examples of {e.name}") for e in r.examples if e.path]
    missing = [f"{e.name}: {e.caption}" for e in r.examples if e.path is None]
    blocks: list[Block] = [Heading("Hard examples"), intro]
    if drawn:
        blocks.append(Gallery(drawn))
    if missing:
        blocks.append(BulletList(missing))
    return blocks


def _version_text(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _reproduce(r: ReportInputs) -> list[Block]:
    recorded = [run.versions for run in r.records if run.versions]
    shared = all(v == r.versions for v in recorded)
    blocks: list[Block] = [
        Heading("Reproduce"),
        Paragraph(
            "Every run is an ordinary `hardmine train` run: its command below trains it on its own "
            f"(same data, seed and budget). The whole comparison again: `{r.invocation}` (runs that "
            "finished in the output folder are skipped, interrupted ones resume)."
        ),
        Table(["library", "version"], [[k, v] for k, v in r.versions.items()]),
    ]
    if not shared:
        blocks.append(
            Paragraph("Some runs were trained earlier with other versions; each run lists its own.")
        )
    for run in [*r.records, *r.check_records]:
        inner: list[Block] = [Code(run.command, "bash")]
        if run.versions and run.versions != r.versions:
            inner.append(Paragraph(f"Trained with {_version_text(run.versions)}."))
        inner.append(Code(r.configs.get(run.run_dir, ""), "yaml"))
        blocks.append(Details(f"{run.name}, seed {run.seed}: command and config ({run.status})", inner))
    return blocks


def _files(r: ReportInputs) -> list[Block]:
    return [
        Heading("Files"),
        BulletList(
            [
                "`results.csv`: one row per run (metrics, costs, status, folder, command).",
                "`results.json`: the same runs, the per-method mean / std / number of seeds, the verdicts "
                "with their intervals, the race (if any), the budget check (if any: its baselines and "
                "their runs) and this setup.",
                "`runs/METHOD-seedN/`: each run's `config.yaml`, `log.csv` (losses and per-head sampling "
                "diagnostics), `metrics.json`, `pr50.json`, `eval_history.json`, `detections/` (the "
                "detections of each evaluation), checkpoints, `train.log` and `run.json`.",
            ]
        ),
    ]


def build_sections(r: ReportInputs) -> list[Block]:
    """The report's blocks, in order (the title is the spec's)."""
    return [
        *_setup(r),
        *_results(r),
        *_race(r),
        *_budget_check(r),
        *_figures(r),
        *_gallery(r),
        *_reproduce(r),
        *_files(r),
    ]


def about(r: ReportInputs) -> dict[str, object]:
    """The setup as data, for results.json."""
    return {
        "title": r.spec.title,
        "spec": display_path(r.spec.source),
        "seeds": list(r.spec.seeds),
        "budget": r.spec.budget,
        "evaluations": r.spec.evaluations,
        "baselines": {v.family: v.baseline for v in r.verdicts},
        "data": describe_data(r.cfg),
        "launcher": r.launcher,
        "invocation": r.invocation,
        "machine": r.machine,
        "versions": r.versions,
        "generated": r.generated,
    }
