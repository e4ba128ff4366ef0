"""`hardmine compare` end to end: a tiny comparison (two runs and one that crashes, a few iterations
each, in their own processes, two at once) writes a report with every section, an HTML page that
embeds its images and renders in headless Chromium, and the results files; a failed run is
reported without stopping the others; a re-run trains nothing that finished. A raced comparison of
two runs through submitit's local executor stops one at a rung and finishes the other. Bad options
are refused before any training. Plus the spec's errors and defaults."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hardmine.cli import main
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.errors import ConfigError
from hardmine.report import compare as compare_module
from hardmine.report import launch as launch_module
from hardmine.report.launch import Slot
from hardmine.report.racing import Elimination
from hardmine.report.runs import plan_runs
from hardmine.report.spec import DEFAULT_SPEC, QUICK_SPEC, load_spec
from hardmine.report.verdicts import Interval, PairedDifference

#: Every run of the tiny comparison: small images, few proposals, one thread (the CPU is shared,
#: and two threads on a busy core are many times slower than one).
TINY = [
    "model.min_size=192",
    "model.max_size=192",
    "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100",
    "rpn.pre_nms_top_n_test=100",
    "rpn.post_nms_top_n_test=50",
    "roi_head.sampler.batch_size_per_image=32",
    "solver.lr=0.01",
    "train.log_period=1",
    "train.num_threads=1",
]

SECTIONS = (
    "## Results",
    "### two-stage",
    "### one-stage",
    "## Failed runs",
    "## Training loss",
    "## AP during training",
    "## Foreground share of the classification loss",
    "## AP per method",
    "## Precision-recall at IoU 0.5",
    "## Hard examples",
    "## Reproduce",
)


def write_spec(path: Path, synth_dir: Path, runs: list[dict], budget: int = 3, **extra: object) -> Path:
    spec = {
        "title": "tiny comparison",
        "seeds": 1,
        "budget": budget,
        "evaluations": budget - 1,
        "overrides": [f"data.train={synth_dir / 'train.json'}", f"data.val={synth_dir / 'val.json'}", *TINY],
        "gallery": {"top_k": 16},
        "runs": runs,
        **extra,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


TINY_RUNS = [
    {"name": "random sampling", "family": "two-stage", "preset": "faster_rcnn_tiny"},
    {"name": "focal loss", "preset": "retinanet_tiny"},  # family from model.arch
    {
        "name": "broken",
        "family": "one-stage",
        "preset": "retinanet_tiny",
        "overrides": ["data.train=/nonexistent/train.json", "data.val=/nonexistent/val.json"],
    },
]


@pytest.fixture(scope="module")
def tiny(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny comparison, run once for the module's tests (with the budget check: each family's
    baseline at 5 iterations too): its spec, output folder, exit status."""
    root = tmp_path_factory.mktemp("compare")
    spec = write_spec(root / "spec.yaml", synth_dir, TINY_RUNS)
    out = root / "out"
    status = main(["compare", str(spec), "--out", str(out), "--jobs", "2", "--budget-check"])
    return {"spec": spec, "out": out, "status": status}


def test_report_has_every_section_and_the_results_files(tiny):
    out = tiny["out"]
    md = (out / "report.md").read_text()
    # the title names the data the runs used (here the spec's data.train / data.val overrides)
    synth = Path(yaml.safe_load(tiny["spec"].read_text())["overrides"][0].split("=", 1)[1]).parent
    assert md.splitlines()[0] == f"# tiny comparison, on `{synth / 'train.json'}` / `{synth / 'val.json'}`"
    for heading in SECTIONS:
        assert heading in md, heading
    # Every linked image exists: five plots and one gallery picture per successful method.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(Path(link).parent.name for link in links) == ["gallery"] * 2 + ["plots"] * 5
    assert all((out / link).is_file() and (out / link).read_bytes()[:4] == b"\x89PNG" for link in links)
    assert "sampler `random` selects" in md and "sampler `none` trains on all" in md
    assert "hardmine train configs/faster_rcnn_tiny.yaml" in md and "train.seed=0" in md

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("random sampling", "trained"),
        ("focal loss", "trained"),
        ("broken", "failed"),
    ]
    assert all(0.0 <= float(rows[i]["AP"]) <= 1.0 and float(rows[i]["peak_memory_mb"]) > 0 for i in (0, 1))
    results = json.loads((out / "results.json").read_text())
    methods = {m["name"]: m for m in results["methods"]}
    assert methods["focal loss"]["family"] == "one-stage" and methods["broken"]["failed_seeds"] == [0]
    assert methods["random sampling"]["stats"]["AP"]["n"] == 1
    assert results["comparison"]["budget"] == 3 and results["comparison"]["versions"]["torch"]

    run_dir = out / "runs" / "random-sampling-seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and metrics["images_per_second"] > 0 and metrics["peak_memory_mb"] > 0
    pr = json.loads((run_dir / "pr50.json").read_text())
    assert len(pr["recall"]) == len(pr["precision"]) == 101
    record = json.loads((run_dir / "run.json").read_text())
    assert (
        record["returncode"] == 0 and record["launcher"] == "local" and record["resources"].endswith("thread")
    )
    # evaluations at 1 and 2 and at the end, each with its detections
    assert sorted(p.name for p in (run_dir / "detections").iterdir()) == [
        f"000000{i}.json" for i in (1, 2, 3)
    ]

    # the verdicts: each family's other methods against its baseline, with intervals (one seed: images)
    assert "Verdicts against random sampling" not in md  # the only finished two-stage method
    assert (
        results["verdicts"][1]["family"] == "one-stage"
        or results["verdicts"][0]["baseline"] == "random sampling"
    )
    assert "runs: 2 runs at once, each on" in md


def test_the_budget_check_trains_each_baseline_at_1_5x_and_reports_the_gain(tiny):
    out = tiny["out"]
    for slug in ("random-sampling-5-iterations-seed0", "focal-loss-5-iterations-seed0"):
        metrics = json.loads((out / "runs" / slug / "metrics.json").read_text())
        assert metrics["iterations"] == 5  # ceil(1.5 x 3)
    md = (out / "report.md").read_text()
    section = md.split("## Budget check", 1)[1].split("\n## ", 1)[0]
    assert "| family | baseline | AP at 3 | AP at 5 | difference (95% CI) | reading |" in section
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| two-stage") or line.startswith("| one-stage")
    ]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| two-stage", "random sampling"],
        ["| one-stage", "focal loss"],
    ]
    results = json.loads((out / "results.json").read_text())
    check = results["budget_check"]
    assert [(f["family"], f["baseline"], f["budget"], f["longer"]) for f in check["families"]] == [
        ("two-stage", "random sampling", 3, 5),
        ("one-stage", "focal loss", 3, 5),
    ]
    for family in check["families"]:
        difference = family["difference"]
        # longer minus budget, the same number as the two estimates' difference (one seed)
        assert difference["difference"] == pytest.approx(
            family["at_longer"]["mean"] - family["at_budget"]["mean"]
        )
        assert family["reading"] in row_readings(rows)
    assert [(r["name"], r["status"]) for r in check["runs"]] == [
        ("random sampling, 5 iterations", "trained"),
        ("focal loss, 5 iterations", "trained"),
    ]
    # the check runs can be reproduced like the others, and stay out of the results tables
    assert "random sampling, 5 iterations, seed 0: command and config (trained)" in md
    assert "| random sampling, 5 iterations |" not in md.split("## Budget check", 1)[0]


def row_readings(rows: list[str]) -> list[str]:
    return [row.rstrip(" |").rsplit(" | ", 1)[1] for row in rows]


def test_a_failed_run_is_reported_and_does_not_stop_the_others(tiny):
    assert tiny["status"] == 1  # non-zero at the end
    md = (tiny["out"] / "report.md").read_text()
    failed = md.split("## Failed runs", 1)[1].split("## Training loss", 1)[0]
    assert "broken, seed 0" in failed and "/nonexistent/train.json: dataset path does not exist" in failed
    for name in ("random-sampling-seed0", "focal-loss-seed0"):
        assert (tiny["out"] / "runs" / name / "metrics.json").is_file()


def find_chromium() -> str:
    """Chromium's path; without it the test fails under CI (which installs it: make test) and is
    skipped elsewhere."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    reason = "headless Chromium is not installed (`make test` installs it as root: apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def test_html_embeds_its_images_and_renders_in_headless_chromium(tiny, tmp_path):
    page = tiny["out"] / "report.html"
    text = page.read_text()
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "<h2>Hard examples</h2>" in text and "<table>" in text

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colors = image.getcolors(maxcolors=1 << 20)
    most_common = max(count for count, _ in colors)
    # Not blank: text, tables and plots give many colours and no single colour covers the page.
    assert len(colors) > 200 and most_common < 0.95 * image.width * image.height


def test_rerun_skips_finished_runs(tiny, monkeypatch, capsys):
    metrics = {p: p.stat().st_mtime_ns for p in (tiny["out"] / "runs").glob("*/metrics.json")}
    assert len(metrics) == 4  # two runs and their budget checks
    launched = []
    real_popen = subprocess.Popen

    def recording_popen(args, **kwargs):
        launched.append(args)
        return real_popen(args, **kwargs)

    monkeypatch.setattr(launch_module.subprocess, "Popen", recording_popen)
    assert main(["compare", str(tiny["spec"]), "--out", str(tiny["out"])]) == 1
    out = capsys.readouterr().out
    assert out.count("finished before, skipped") == 2
    # Only the failed run trains again; the finished ones are untouched.
    assert len(launched) == 1 and "output_dir=" + str(tiny["out"] / "runs" / "broken-seed0") in launched[0]
    assert {p: p.stat().st_mtime_ns for p in metrics} == metrics
    assert (tiny["out"] / "report.md").is_file()


def test_a_run_whose_final_detections_are_degenerate_is_marked(tiny, tmp_path):
    planned = plan_runs(load_spec(tiny["spec"]), tiny["out"])[0]  # random sampling, seed 0, finished
    run_dir = tmp_path / "run"
    shutil.copytree(planned.run_dir, run_dir)
    copy = dataclasses.replace(planned, run_dir=run_dir)
    final = run_dir / "detections" / "0000003.json"
    box = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0]}
    final.write_text(json.dumps([{**box, "score": 0.25}, {**box, "score": 0.2501}]))
    assert (
        compare_module.run_record(copy, "trained").degenerate
        == "collapsed: all 2 detections score 0.2500-0.2501"
    )
    final.write_text("[]")
    assert compare_module.run_record(copy, "trained").degenerate == "no detections"
    final.unlink()  # detections not kept: nothing to say
    assert compare_module.run_record(copy, "trained").degenerate is None
    assert compare_module.run_record(copy, "failed").degenerate is None


def test_a_changed_config_is_not_skipped(tiny):
    spec = load_spec(tiny["spec"])
    planned = plan_runs(spec, tiny["out"])
    assert planned[0].finished() and planned[0].reached(2)
    changed = plan_runs(spec.with_options(budget=4), tiny["out"])
    assert not changed[0].finished() and not changed[0].resumable()  # other max_iter: trains afresh
    assert changed[0].trained_iterations() == 0
    # the thread count or the evaluation period do not change the weights: the same run
    threads = plan_runs(
        spec.with_options(overrides=["train.num_threads=2", "train.eval_period=3"]), tiny["out"]
    )
    assert threads[0].finished()
    # a config.yaml written before an option existed (here the seg_head section): the same run
    saved = planned[0].run_dir / "config.yaml"
    text = saved.read_text()
    older = yaml.safe_load(text)
    del older["seg_head"]
    try:
        saved.write_text(yaml.safe_dump(older, sort_keys=False))
        assert plan_runs(spec, tiny["out"])[0].finished()
    finally:
        saved.write_text(text)


def test_the_launch_sets_the_threads_a_config_leaves_open_and_where_a_race_stops(tiny):
    planned = plan_runs(load_spec(tiny["spec"]), tiny["out"])[0]
    assert compare_module.launch_overrides(planned, Slot(0, 1), None) == []  # the spec fixes 1 thread
    planned.cfg.train.num_threads = 0
    assert compare_module.launch_overrides(planned, Slot(0, 3), 2) == [
        "train.num_threads=3",
        "train.stop_at=2",
    ]
    assert compare_module.launch_overrides(planned, Slot(0, None, ("",)), None) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--jobs", "0"], "--jobs 0: the number of runs at once must be >= 1"),
        (["--gpus-per-run", "1"], "--gpus-per-run: no GPU is visible"),
        (["--baseline", "OHEM"], "--baseline: 'OHEM' is not a run of the spec; runs: 'random sampling'"),
        (["--launcher", "slurm"], "--launcher slurm: sinfo / sbatch are not on PATH"),
        (["--race", "--budget", "3"], "--race compares the runs at evaluations during training"),
    ],
)
def test_bad_options_are_refused_before_any_training(tmp_path, capsys, synth_dir, options, message):
    if "slurm" in options and (shutil.which("sinfo") or shutil.which("sbatch")):
        pytest.skip("this machine has Slurm commands")
    runs = [{"name": "random sampling", "preset": "faster_rcnn_tiny"}]
    spec = write_spec(tmp_path / "spec.yaml", synth_dir, runs, evaluations=0)
    assert main(["compare", str(spec), *options, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_a_race_through_submitits_local_executor(synth_dir, tmp_path, monkeypatch):
    """Two runs as submitit jobs (the cluster path, with the local executor), raced over 2 iterations
    (one rung, at 1): the second is made clearly worse there, stops with its checkpoint, and the
    first resumes to the end."""
    pytest.importorskip("submitit")
    runs = [
        {"name": "focal loss", "preset": "retinanet_tiny"},
        {"name": "alpha CE", "preset": "retinanet_tiny", "overrides": ["dense_head.cls_loss=bce"]},
    ]
    spec = write_spec(tmp_path / "spec.yaml", synth_dir, runs, budget=2, evaluations=2)
    real = compare_module.eliminate

    def stop_alpha_ce_at_the_first_rung(families, baselines, rung):
        real(families, baselines, rung)  # the real rule runs on the runs' real scores
        assert rung == 1 and [m.name for m in families["one-stage"]] == ["focal loss", "alpha CE"]
        worse = PairedDifference("alpha CE", "focal loss", -0.05, Interval(-0.08, -0.02), 1, 4)
        return [Elimination("alpha CE", "one-stage", 1, worse)]

    monkeypatch.setattr(compare_module, "eliminate", stop_alpha_ce_at_the_first_rung)
    out = tmp_path / "out"
    argv = ["compare", str(spec), "--launcher", "submitit-local", "--jobs", "2", "--race", "--out", str(out)]
    assert main(argv) == 0
    rows = {r["name"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert (rows["focal loss"]["status"], rows["alpha CE"]["status"]) == ("trained", "stopped")
    stopped = out / "runs" / "alpha-ce-seed0"
    assert load_checkpoint(stopped / "checkpoint_last.pt")["iteration"] == 1
    assert not (stopped / "metrics.json").exists()
    finished = out / "runs" / "focal-loss-seed0"
    assert json.loads((finished / "metrics.json").read_text())["iterations"] == 2
    assert json.loads((finished / "job.json").read_text())["launcher"] == "submitit-local"
    assert (out / "cluster").is_dir()
    md = (out / "report.md").read_text()
    assert "## Race" in md and "| one-stage | alpha CE | 1 |" in md
    assert (
        "Verdicts against focal loss" in md
        and "| alpha CE | – | – | – | – | – | stopped at 1: worse than focal loss |" in md
    )
    race = json.loads((out / "results.json").read_text())["race"]
    assert race["rungs"] == [1] and race["cost"]["trained"] == 2 + 1


# --- the spec --------------------------------------------------------------------------------


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runs: []\n", "runs: the spec has no runs"),
        ("seeds: 1\n", "runs: the spec has no runs"),
        ("runs:\n  - {name: a, preset: no_such_preset}\n", "runs[0].preset: unknown preset 'no_such_preset'"),
        ("runs:\n  - {name: a, preset: faster_rcnn_tiny, overrides: [roi_head.samplr=ohem]}\n", "run 'a'"),
        ("runs:\n  - {name: a, preset: faster_rcnn_tiny, overrides: [solver.lr]}\n", "runs[0].overrides"),
        ("runs:\n  - {name: a, preset: faster_rcnn_tiny, sampler: ohem}\n", "runs[0]: unknown key 'sampler'"),
        ("runs:\n  - {preset: faster_rcnn_tiny}\n", "runs[0].name: required"),
        ("budgett: 3\nruns:\n  - {name: a, preset: faster_rcnn_tiny}\n", "unknown key 'budgett'"),
        ("budget: 0\nruns:\n  - {name: a, preset: faster_rcnn_tiny}\n", "budget: expected"),
        ("seeds: [1, 1]\nruns:\n  - {name: a, preset: faster_rcnn_tiny}\n", "seeds: expected"),
        (
            "runs:\n  - {name: a, preset: faster_rcnn_tiny}\n  - {name: a, preset: retinanet_tiny}\n",
            "name 'a'",
        ),
        ("runs:\n  - {name: a, preset: retinanet_tiny, family: two-stage}\n", "is one-stage"),
        ("runs:\n  - {name: a, preset: retinanet_tiny, family: three-stage}\n", "runs[0].family"),
        ("evaluations: -1\nruns:\n  - {name: a, preset: faster_rcnn_tiny}\n", "evaluations: expected"),
        ("baseline: b\nruns:\n  - {name: a, preset: faster_rcnn_tiny}\n", "baseline: 'b' is not a run"),
        (
            "baseline: [a, b]\nruns:\n  - {name: a, preset: faster_rcnn_tiny}\n"
            "  - {name: b, preset: faster_rcnn_ohem}\n",
            "'a' and 'b' are both two-stage runs",
        ),
        ("- a\n- b\n", "expected a mapping"),
        ("runs:\n  - {include: nowhere.yaml}\n", "runs[0].include: no comparison spec 'nowhere.yaml'"),
        ("runs:\n  - {include: default, runs: [OHME]}\n", "runs[0].runs: 'OHME' is not a run of"),
        ("runs:\n  - {include: default, runs: OHEM}\n", "runs[0].runs: expected a list of run names"),
        ("runs:\n  - {include: default, name: x}\n", "runs[0]: unknown key 'name'"),
        ("runs:\n  - {include: spec.yaml}\n", "'spec.yaml' includes itself (spec.yaml -> spec.yaml)"),
        (
            "runs:\n  - {include: default}\n  - {include: default, runs: [OHEM]}\n",
            "two runs have the name 'OHEM'",
        ),
    ],
)
def test_spec_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = spec_file(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_spec(path)
    assert str(path) in str(exc.value) and message in str(exc.value)


def test_a_spec_includes_the_runs_of_another_all_or_the_named_ones(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "mine.yaml").write_text(
        (Path(DEFAULT_SPEC).parent.parent / "retinanet_tiny.yaml").read_text()
    )
    (tmp_path / "base" / "base.yaml").write_text(
        "runs:\n  - {name: a, preset: faster_rcnn_tiny}\n  - {name: b, preset: mine}\n"
        "  - {name: c, preset: faster_rcnn_ohem}\n"
    )
    path = spec_file(
        tmp_path,
        "runs:\n  - {include: base/base.yaml, runs: [c, b]}\n  - {name: d, preset: faster_rcnn_tiny}\n"
        "  - include: base/base\n    runs: [a]\n",
    )
    spec = load_spec(path)
    assert [(r.name, r.family) for r in spec.runs] == [
        ("c", "two-stage"),
        ("b", "one-stage"),
        ("d", "two-stage"),
        ("a", "two-stage"),
    ]
    # the included spec's presets resolve next to it, not next to the including spec
    assert spec.runs[1].preset == tmp_path / "base" / "mine.yaml"
    everything = load_spec(spec_file(tmp_path, "runs:\n  - include: base/base.yaml\n"))
    assert [r.name for r in everything.runs] == ["a", "b", "c"]
    claims = load_spec(Path(DEFAULT_SPEC).parent / "claims.yaml")
    assert [r.name for r in claims.runs[:6]] == [r.name for r in load_spec(DEFAULT_SPEC).runs]


def test_an_include_cycle_through_two_specs_is_refused(tmp_path):
    (tmp_path / "other.yaml").write_text("runs:\n  - include: spec.yaml\n")
    path = spec_file(tmp_path, "runs:\n  - include: other.yaml\n")
    with pytest.raises(ConfigError, match=r"includes itself \(spec.yaml -> other.yaml -> spec.yaml\)"):
        load_spec(path)


def test_bad_override_from_the_command_line_names_the_run(tmp_path, capsys):
    path = spec_file(tmp_path, "runs:\n  - {name: mine, preset: faster_rcnn_tiny}\n")
    assert main(["compare", str(path), "roi_head.bogus=1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "run 'mine'" in err and "roi_head.bogus" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_quick_and_a_spec_together_is_an_error(tmp_path, capsys):
    assert main(["compare", str(DEFAULT_SPEC), "--quick"]) == 2
    assert "--quick runs" in capsys.readouterr().err


def test_command_line_options_replace_seeds_budget_and_data(tmp_path):
    spec = load_spec(DEFAULT_SPEC).with_options(seeds=2, budget=40, data="a/train.json,a/val.json")
    assert spec.seeds == (0, 1) and spec.budget == 40
    cfg = spec.run_config(spec.runs[0], 1, tmp_path / "r")
    assert (cfg.data.train, cfg.data.val, cfg.solver.max_iter, cfg.train.seed) == (
        "a/train.json",
        "a/val.json",
        40,
        1,
    )
    assert cfg.solver.warmup_iters == 10  # the preset's 50 capped at a quarter of the budget
    full = load_spec(DEFAULT_SPEC).run_config(spec.runs[0], 0, tmp_path / "f")
    assert (full.solver.max_iter, full.solver.warmup_iters) == (400, 50)  # the preset's own
    step = load_spec(DEFAULT_SPEC).with_options(
        budget=600, overrides=["solver.schedule=step", "solver.steps=[333,444]"]
    )
    stepped = step.run_config(step.runs[0], 0, tmp_path / "s").solver
    assert (stepped.max_iter, stepped.steps) == (600, [500, 666])  # written for the preset's 400
    voc = load_spec(DEFAULT_SPEC).with_options(data="VOC2007").run_config(spec.runs[0], 0, tmp_path)
    assert voc.data.train == voc.data.val == "VOC2007"
    with pytest.raises(ConfigError, match="--seeds"):
        load_spec(DEFAULT_SPEC).with_options(seeds=0)


def test_default_spec_compares_three_two_stage_and_three_one_stage_strategies(tmp_path):
    spec = load_spec(DEFAULT_SPEC)
    assert [(r.name, r.family) for r in spec.runs] == [
        ("random sampling", "two-stage"),
        ("OHEM", "two-stage"),
        ("IoU-balanced", "two-stage"),
        ("alpha-balanced CE", "one-stage"),
        ("focal loss", "one-stage"),
        ("SSD hard negatives", "one-stage"),
    ]
    configs = [spec.run_config(r, 0, tmp_path) for r in spec.runs]
    assert [c.roi_head.sampler.name for c in configs[:3]] == ["random", "ohem", "iou_balanced"]
    alpha_ce, focal, hard = configs[3:]
    assert (alpha_ce.dense_head.cls_loss.name, alpha_ce.dense_head.cls_loss.alpha) == ("bce", 0.25)
    assert (focal.dense_head.cls_loss.name, hard.dense_head.sampler.name) == ("focal", "hard_negative")
    assert all(c.solver.max_iter == spec.budget for c in configs)

    # Alpha-balanced CE starts from the prior-probability bias, as focal loss does (RetinaNet's init).
    from hardmine.models.build import build_model

    bias = build_model(alpha_ce, num_classes=3).head.classification.cls_logits.bias
    prior = alpha_ce.dense_head.prior_prob
    assert bias.detach().allclose(bias.new_full(bias.shape, -math.log((1 - prior) / prior)))

    quick = load_spec(QUICK_SPEC)
    assert [r.name for r in quick.runs] == [r.name for r in spec.runs] and quick.budget <= 30


@pytest.mark.parametrize("spec_file", sorted(Path(DEFAULT_SPEC).parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_is_valid(spec_file, tmp_path):
    spec = load_spec(spec_file)
    assert spec.runs
    for run in spec.runs:
        spec.run_config(run, 0, tmp_path)  # builds and validates the run's whole config


def test_a_segmentation_comparison_reports_miou_and_the_kept_pixels(synth_dir, tmp_path):
    """Two tiny segmentation runs end to end: mIoU tables and curves, the gallery of kept pixels."""
    runs = [
        {"name": "cross-entropy", "preset": "segmentation_tiny"},  # family from model.arch
        {
            "name": "pixel OHEM",
            "family": "segmentation",
            "preset": "segmentation_tiny",
            "overrides": ["seg_head.sampler=ohem"],
        },
    ]
    spec = write_spec(tmp_path / "spec.yaml", synth_dir, runs, baseline=["cross-entropy"])
    out = tmp_path / "out"
    assert main(["compare", str(spec), "--out", str(out), "--jobs", "2"]) == 0
    md = (out / "report.md").read_text()
    for heading in ("### segmentation", "## mIoU during training", "## mIoU per method", "## Hard examples"):
        assert heading in md, heading
    assert "| method | seeds | mIoU | pixel accuracy | s/iter |" in md
    assert "## Precision-recall at IoU 0.5" not in md
    # verdicts from each image's confusion matrix: mIoU on bootstrap replicates of the images
    assert "Verdicts against cross-entropy, in mIoU points" in md
    assert re.search(r"pixel OHEM: [+-]\d+\.\d mIoU vs cross-entropy \(95% CI .*; 1 seed x 4 images\)", md)
    confusions = json.loads((out / "runs" / "pixel-ohem-seed0" / "detections" / "0000003.json").read_text())
    assert confusions["classes"][0] == "background" and len(confusions["images"]) == 4
    rows_md = md.split("| method | seeds x images | mIoU |")[1]
    assert "| cross-entropy | 1 x 4 |" in rows_md
    assert "sampler `ohem` keeps the pixels whose true-class probability is below 0.7" in md
    assert "sampler `none` keeps every pixel not ignored" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    gallery = [link for link in links if Path(link).parent.name == "gallery"]
    assert len(gallery) == 2 and all((out / link).read_bytes()[:4] == b"\x89PNG" for link in gallery)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["name"], r["family"], r["status"]) for r in rows] == [
        ("cross-entropy", "segmentation", "trained"),
        ("pixel OHEM", "segmentation", "trained"),
    ]
    assert all(0.0 <= float(r["mIoU"]) <= 1.0 and r["IoU/background"] for r in rows)
    log = list(csv.DictReader((out / "runs" / "pixel-ohem-seed0" / "log.csv").open()))
    assert float(log[-1]["seg/num_kept"]) <= float(log[-1]["seg/num_valid"])
    assert "mIoU and pixel accuracy on the validation set, in percent" in md and "AP50" not in md
