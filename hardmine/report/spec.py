"""The comparison spec: which runs `hardmine compare` trains, with which seeds, budget and data.

A spec is a YAML file (see docs/compare.md and configs/compare/default.yaml):

    title: Sampling strategies  # optional; default: the file name; the report adds the data ("..., on X")
    seeds: 1                # N (seeds 0..N-1) or a list of seeds
    budget: 600             # training iterations of every run (sets solver.max_iter)
    evaluations: 4          # evaluations during training (every budget / N iterations); 0 = at the end only
    baseline: [random sampling]   # per family, the run the others are compared with (default: its first)
    overrides: []           # KEY=VALUE applied to every run, e.g. data.train=... data.val=...
    gallery:                # optional
      image: null           # id or file name of the training image shown; null = the one with most objects
      top_k: 64             # samplers that keep every candidate: how many highest-loss candidates to draw
    runs:
      - name: OHEM          # shown in tables and plots; unique
        family: two-stage   # optional (from model.arch): two-stage (Faster/Fast R-CNN), one-stage,
                            # or segmentation (FCN, DeepLabV3)
        preset: faster_rcnn_ohem   # a preset of configs/ (".yaml" optional) or a path to a YAML preset
        overrides: [roi_head.sampler.nms_thresh=null]

A `runs` entry may also take the runs of another spec instead of repeating them, all of them or
the named ones, in that spec's order (the path relative to this spec's folder, the working
directory or configs/compare/; an included spec may include others, never itself):

      - include: default.yaml
        runs: [random sampling, OHEM]   # optional; default: every run of default.yaml

A run's config is its preset, then the spec's `overrides`, the run's `overrides`, the command line's
overrides, and last what the comparison fixes for every run: `solver.max_iter` (the budget),
`train.eval_period` (budget / evaluations, when `evaluations` > 0), `train.seed`, `output_dir` and
`train.progress=false` (the comparison draws its own progress bars); a warmup longer than a
quarter of the budget is shortened to that quarter, and a step schedule's `solver.steps` move with
the budget: they are read as written for the `solver.max_iter` of the preset (or of the overrides,
if one sets it), so steps [333] with a preset's 400 iterations fall at 500 with a budget of 600.
Every config is built and validated when the spec is loaded, so a bad preset or override fails
before any training, naming the spec file and the run.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardmine.config import Config, load_config, read_yaml_mapping
from hardmine.engine.schedule import steps_for_budget
from hardmine.errors import ConfigError

#: The presets folder of the repository (`configs/`), where bare preset names are looked up.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
#: The spec `hardmine compare` runs without a SPEC argument, and the one `--quick` runs.
COMPARE_DIR = CONFIGS_DIR / "compare"
DEFAULT_SPEC = COMPARE_DIR / "default.yaml"
QUICK_SPEC = COMPARE_DIR / "quick.yaml"

#: A run's warmup may take at most 1/WARMUP_SHARE of the budget (longer ones are shortened to that).
WARMUP_SHARE = 4

FAMILIES = ("two-stage", "one-stage", "segmentation")
#: model.arch -> family, when a run does not name its family.
ARCH_FAMILY = {
    "faster_rcnn": "two-stage",
    "fast_rcnn": "two-stage",
    "retinanet": "one-stage",
    "fcn": "segmentation",
    "deeplabv3": "segmentation",
}

_SPEC_KEYS = ("title", "seeds", "budget", "evaluations", "baseline", "overrides", "gallery", "runs")
_RUN_KEYS = ("name", "family", "preset", "overrides")
_GALLERY_KEYS = ("image", "top_k")
_INCLUDE_KEYS = ("include", "runs")


@dataclass(frozen=True)
class RunSpec:
    """One compared method: a preset plus overrides, with its display name and detector family."""

    name: str
    family: str
    preset: Path
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name as a folder name: lowercase letters, digits and dashes."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class GallerySpec:
    """Which training image the hard-example gallery shows, and how many candidates of samplers
    that keep them all (`sampler=none`) are drawn, highest loss first."""

    image: str | None = None
    top_k: int = 64


@dataclass(frozen=True)
class CompareSpec:
    """What `hardmine compare` trains: every run with every seed, `budget` iterations each."""

    source: Path
    title: str
    runs: tuple[RunSpec, ...]
    seeds: tuple[int, ...]
    budget: int
    overrides: tuple[str, ...] = ()
    gallery: GallerySpec = field(default_factory=GallerySpec)
    #: Evaluations during training (every budget // evaluations iterations); 0: at the end only.
    evaluations: int = 0
    #: Run names the other runs of their family are compared with (at most one per family); a
    #: family without one is compared with its first run.
    baselines: tuple[str, ...] = ()
    #: Overrides from the command line: applied to every run after the run's own.
    extra_overrides: tuple[str, ...] = ()

    @property
    def eval_period(self) -> int:
        """train.eval_period of every run (0: no evaluation during training)."""
        return max(1, self.budget // self.evaluations) if self.evaluations else 0

    def baseline_of(self, family: str) -> str:
        """The run the others of `family` are compared with."""
        members = [r.name for r in self.runs if r.family == family]
        named = [name for name in self.baselines if name in members]
        return named[0] if named else members[0]

    def with_options(
        self,
        seeds: int | None = None,
        budget: int | None = None,
        data: str | None = None,
        overrides: list[str] | tuple[str, ...] = (),
        baselines: list[str] | tuple[str, ...] | None = None,
    ) -> CompareSpec:
        """The spec with the command line's choices: `seeds` (0..N-1), `budget`, `data`
        ("TRAIN[,VAL]"; VAL defaults to TRAIN, right for a VOC root), extra overrides and
        `baselines` (run names; they replace the spec's)."""
        extra = list(overrides)
        if data is not None:
            train, _, val = data.partition(",")
            if not train:
                raise ConfigError(f"--data {data!r}: expected TRAIN[,VAL]")
            extra[:0] = [f"data.train={train}", f"data.val={val or train}"]
        if seeds is not None and seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {seeds}")
        if budget is not None and budget < 1:
            raise ConfigError(f"--budget must be >= 1 iteration, got {budget}")
        spec = dataclasses.replace(
            self,
            seeds=tuple(range(seeds)) if seeds is not None else self.seeds,
            budget=budget if budget is not None else self.budget,
            extra_overrides=(*self.extra_overrides, *extra),
            baselines=_baselines(baselines, self.runs, "--baseline") if baselines else self.baselines,
        )
        spec.check()
        return spec

    def run_overrides(self, run: RunSpec, seed: int, output_dir: Path) -> list[str]:
        """Every override of `run` with `seed` after its preset, in the order they apply."""
        written = [*self.overrides, *run.overrides, *self.extra_overrides]
        own = [*written, f"solver.max_iter={self.budget}"]
        fixed = [f"train.seed={seed}", "train.progress=false", f"output_dir={output_dir}"]
        if self.evaluations:
            fixed.insert(0, f"train.eval_period={self.eval_period}")
        # The preset's warmup stands unless it would take more than a quarter of a short budget
        # (e.g. --quick or --budget 100): then it is shortened to that quarter.
        solver = self._config(run, written).solver  # as written, before the budget
        if solver.warmup_iters > self.budget // WARMUP_SHARE:
            own.append(f"solver.warmup_iters={self.budget // WARMUP_SHARE}")
        # A step schedule's steps keep their place in training: at the same fractions of the
        # budget as of the max_iter they were written for.
        if solver.schedule == "step" and solver.steps and solver.max_iter != self.budget:
            steps = steps_for_budget(solver, self.budget)
            own.append(f"solver.steps=[{','.join(map(str, steps))}]")
        return [*own, *fixed]

    def run_config(self, run: RunSpec, seed: int, output_dir: Path) -> Config:
        """The validated config of `run` with `seed`, writing to `output_dir`."""
        return self._config(run, self.run_overrides(run, seed, output_dir))

    def _config(self, run: RunSpec, overrides: list[str]) -> Config:
        try:
            return load_config(run.preset, overrides)
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: run {run.name!r}: {exc}") from None

    def check(self) -> None:
        """Build every run's config once (seed 0's), so errors show before any training."""
        for run in self.runs:
            cfg = self.run_config(run, self.seeds[0], Path("unused"))
            arch_family = ARCH_FAMILY[cfg.model.arch]
            if run.family != arch_family:
                raise ConfigError(
                    f"{self.source}: run {run.name!r}: family {run.family!r} but model.arch="
                    f"{cfg.model.arch} is {arch_family}"
                )


def display_path(path: Path) -> str:
    """`path` as a user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _where(path: Path, key: str) -> str:
    return f"{path}: {key}"


def _check_keys(mapping: dict[str, Any], allowed: tuple[str, ...], path: Path, key: str) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{_where(path, key)}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}"
        )


def _overrides(value: Any, path: Path, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{_where(path, key)}: expected a list of KEY=VALUE strings, got {value!r}")
    return tuple(value)


def available_presets() -> list[str]:
    """Names of the presets in `configs/` (what a run's `preset` may name without a path)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _find_yaml(name: str, spec_path: Path, library: Path, skip_spec: bool) -> Path | None:
    """`name` relative to the spec's folder, to the working directory, or in `library`, each with
    ".yaml" added if missing; with `skip_spec`, never the spec itself."""
    names = [name] if name.endswith((".yaml", ".yml")) else [name, f"{name}.yaml"]
    for folder in (spec_path.parent, Path.cwd(), library):
        for candidate in (folder / n for n in names):
            if candidate.is_file() and not (skip_spec and candidate.resolve() == spec_path.resolve()):
                return candidate
    return None


def resolve_preset(preset: str, spec_path: Path) -> Path:
    """The preset file: `preset` relative to the spec's folder, to the working directory, or in
    `configs/`, each with ".yaml" added if missing; never the spec itself (configs/compare/
    segmentation.yaml runs the preset configs/segmentation.yaml)."""
    found = _find_yaml(preset, spec_path, CONFIGS_DIR, skip_spec=True)
    if found is None:
        raise ConfigError(
            f"unknown preset {preset!r}: not a file next to {spec_path}, in the working directory or in "
            f"{CONFIGS_DIR}; presets there: {', '.join(available_presets())}"
        )
    return found


def _baselines(value: Any, runs: tuple[RunSpec, ...], where: str) -> tuple[str, ...]:
    """Baseline run names: each a run of the spec, at most one per family."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: expected a run name or a list of run names, got {value!r}")
    family = {r.name: r.family for r in runs}
    for name in names:
        if name not in family:
            raise ConfigError(
                f"{where}: {name!r} is not a run of the spec; runs: {', '.join(map(repr, family))}"
            )
    for fam in FAMILIES:
        named = [n for n in names if family[n] == fam]
        if len(named) > 1:
            both = " and ".join(map(repr, named))
            raise ConfigError(f"{where}: {both} are both {fam} runs; name one per family")
    return tuple(names)


def _seeds(value: Any, path: Path) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    raise ConfigError(
        f"{_where(path, 'seeds')}: expected N >= 1 or a list of distinct seeds >= 0, got {value!r}"
    )


def _run(item: Any, i: int, path: Path) -> RunSpec:
    key = f"runs[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(
            f"{_where(path, key)}: expected a mapping with name, preset and overrides, got {item!r}"
        )
    _check_keys(item, _RUN_KEYS, path, key)
    for required in ("name", "preset"):
        if not isinstance(item.get(required), str) or not item[required].strip():
            raise ConfigError(f"{_where(path, f'{key}.{required}')}: required, a non-empty string")
    family = item.get("family")
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"{_where(path, f'{key}.family')}: {family!r}; choose from {', '.join(FAMILIES)}")
    try:
        preset = resolve_preset(item["preset"], path)
    except ConfigError as exc:
        raise ConfigError(f"{_where(path, f'{key}.preset')}: {exc}") from None
    overrides = _overrides(item.get("overrides"), path, f"{key}.overrides")
    if family is None:  # from the preset's architecture, as the run's overrides leave it
        try:
            arch = load_config(preset, list(overrides)).model.arch
        except ConfigError as exc:
            raise ConfigError(f"{path}: run {item['name']!r}: {exc}") from None
        family = ARCH_FAMILY[arch]
    return RunSpec(name=item["name"].strip(), family=family, preset=preset, overrides=overrides)


def _runs(data: dict[str, Any], path: Path, chain: tuple[Path, ...]) -> tuple[RunSpec, ...]:
    """The runs of the spec `data` read from `path`, included specs expanded in place; `chain` is
    the specs being read (the include path that led here), to refuse a cycle."""
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{_where(path, 'runs')}: the spec has no runs; list at least one (name, preset)")
    found: list[RunSpec] = []
    for i, item in enumerate(runs):
        if isinstance(item, dict) and "include" in item:
            found.extend(_included_runs(item, f"runs[{i}]", path, chain))
        else:
            found.append(_run(item, i, path))
    return tuple(found)


def _included_runs(item: dict[str, Any], key: str, path: Path, chain: tuple[Path, ...]) -> list[RunSpec]:
    """The runs an `include` entry names: all runs of the included spec, or those in its `runs`."""
    _check_keys(item, _INCLUDE_KEYS, path, key)
    name = item["include"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{_where(path, f'{key}.include')}: expected the path of a comparison spec, got {name!r}"
        )
    try:
        included = _resolve_spec(name, path)
    except ConfigError as exc:
        raise ConfigError(f"{_where(path, f'{key}.include')}: {exc}") from None
    if included.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, included.resolve()))
        raise ConfigError(f"{_where(path, f'{key}.include')}: {name!r} includes itself ({cycle})")
    data = read_yaml_mapping(included, "comparison spec", f"a mapping with the keys {', '.join(_SPEC_KEYS)}")
    _check_keys(data, _SPEC_KEYS, included, "top level")
    runs = _runs(data, included, (*chain, included.resolve()))
    wanted = item.get("runs")
    if wanted is None:
        return list(runs)
    if not isinstance(wanted, list) or not wanted or not all(isinstance(n, str) for n in wanted):
        raise ConfigError(
            f"{_where(path, f'{key}.runs')}: expected a list of run names of {name}, got {wanted!r}"
        )
    by_name = {r.name: r for r in runs}
    for run_name in wanted:
        if run_name not in by_name:
            raise ConfigError(
                f"{_where(path, f'{key}.runs')}: {run_name!r} is not a run of {included}; "
                f"runs: {', '.join(map(repr, by_name))}"
            )
    return [by_name[n] for n in wanted]


def _resolve_spec(name: str, spec_path: Path) -> Path:
    """An included spec: `name` relative to the including spec's folder, to the working directory,
    or in configs/compare/, each with ".yaml" added if missing (a spec naming itself is a cycle)."""
    found = _find_yaml(name, spec_path, COMPARE_DIR, skip_spec=False)
    if found is None:
        raise ConfigError(
            f"no comparison spec {name!r}: not a file next to {spec_path}, in the working directory or "
            f"in {COMPARE_DIR}; specs there: {', '.join(sorted(p.stem for p in COMPARE_DIR.glob('*.yaml')))}"
        )
    return found


def load_spec(path: str | Path) -> CompareSpec:
    """Read and validate a spec file; errors name the file and the key at fault."""
    path = Path(path)
    data = read_yaml_mapping(path, "comparison spec", f"a mapping with the keys {', '.join(_SPEC_KEYS)}")
    _check_keys(data, _SPEC_KEYS, path, "top level")
    run_specs = _runs(data, path, (path.resolve(),))
    for kind, values in (("name", [r.name for r in run_specs]), ("folder name", [r.slug for r in run_specs])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{_where(path, 'runs')}: two runs have the {kind} {repeated[0]!r}")
    budget = data.get("budget", 600)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ConfigError(f"{_where(path, 'budget')}: expected a number of iterations >= 1, got {budget!r}")
    gallery = data.get("gallery") or {}
    if not isinstance(gallery, dict):
        raise ConfigError(f"{_where(path, 'gallery')}: expected a mapping with image, top_k")
    _check_keys(gallery, _GALLERY_KEYS, path, "gallery")
    top_k = gallery.get("top_k", GallerySpec.top_k)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"{_where(path, 'gallery.top_k')}: expected an integer >= 1, got {top_k!r}")
    image = gallery.get("image")
    evaluations = data.get("evaluations", 0)
    if not isinstance(evaluations, int) or isinstance(evaluations, bool) or not 0 <= evaluations <= budget:
        raise ConfigError(
            f"{_where(path, 'evaluations')}: expected a number of evaluations during training from 0 to "
            f"the budget ({budget}), got {evaluations!r}"
        )
    baselines = ()
    if "baseline" in data:
        baselines = _baselines(data["baseline"], run_specs, _where(path, "baseline"))
    spec = CompareSpec(
        source=path,
        title=str(data.get("title") or path.stem),
        runs=run_specs,
        seeds=_seeds(data.get("seeds", 1), path),
        budget=budget,
        overrides=_overrides(data.get("overrides"), path, "overrides"),
        gallery=GallerySpec(image=None if image is None else str(image), top_k=top_k),
        evaluations=evaluations,
        baselines=baselines,
    )
    spec.check()
    return spec
