"""Config: defaults, YAML presets, key=value overrides and validation errors naming the key."""

from pathlib import Path

import pytest

from hardmine.config import Config, config_from_dict, describe_options, load_config
from hardmine.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_match_the_papers():
    cfg = Config()
    assert (cfg.roi_head.batch_size_per_image, cfg.roi_head.fg_fraction) == (512, 0.25)
    assert (cfg.roi_head.fg_iou, cfg.roi_head.bg_iou_lo, cfg.roi_head.bg_iou_hi) == (0.5, 0.1, 0.5)
    assert (cfg.rpn.batch_size_per_image, cfg.rpn.fg_fraction, cfg.rpn.fg_iou, cfg.rpn.bg_iou_hi) == (
        256,
        0.5,
        0.7,
        0.3,
    )


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "solver.lr=0.5",
            "model.min_size=[256, 320]",
            "train.deterministic=false",
            "solver.steps=[10, 20]",
            "roi_head.fg_iou=1",
        ],
    )
    assert cfg.solver.lr == 0.5 and cfg.model.min_size == [256, 320] and cfg.train.deterministic is False
    assert (
        cfg.solver.steps == [10, 20] and cfg.roi_head.fg_iou == 1.0 and isinstance(cfg.roi_head.fg_iou, float)
    )


def test_scalar_becomes_one_element_list():
    assert load_config(None, ["model.min_size=300"]).model.min_size == [300]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("roi_head.samplr=random", "'samplr' is not a key of roi_head; valid: roi_head.sampler"),
        ("nosuch=1", "'nosuch' is not a key of the top level"),
        ("roi_head.sampler=bogus", "roi_head.sampler='bogus' is not allowed; choose from random, none"),
        ("roi_head.batch_size_per_image=-4", "roi_head.batch_size_per_image: must be > 0"),
        ("roi_head.fg_fraction=1.5", "roi_head.fg_fraction: must be in [0, 1]"),
        ("roi_head.batch_size_per_image=many", "roi_head.batch_size_per_image: expected int, got 'many'"),
        ("solver.lr=true", "solver.lr: expected float"),
        ("roi_head.bg_iou_lo=0.6", "need 0 <= bg_iou_lo <= bg_iou_hi <= fg_iou <= 1"),
        ("model.arch=fast_rcnn", "data.train_proposals: Fast R-CNN needs a proposals file"),
        ("solver.amp=fp8", "solver.amp='fp8' is not allowed; choose from off, bf16, fp16"),
        ("roi_head=3", "roi_head: is a section"),
        ("novalue", "is not of the form key=value"),
        ("roi_head.score_chunk_size=0", "roi_head.score_chunk_size: must be > 0"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_yaml_presets_load(tmp_path):
    for path in CONFIGS.glob("*.yaml"):
        overrides = ["data.train_proposals=x.pt"] if "fast_rcnn" in path.name else []
        load_config(path, overrides)
    bad = tmp_path / "bad.yaml"
    bad.write_text("roi_head:\n  samplerr: random\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'roi_head.samplerr'"):
        load_config(bad)
    bad.write_text("roi_head: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(bad)


def test_round_trip_through_dict():
    cfg = load_config(CONFIGS / "smoke.yaml", ["solver.lr=0.03"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_help_lists_every_option():
    text = describe_options()
    for key in ("model.arch", "roi_head.sampler", "rpn.fg_iou", "solver.warmup_iters", "output_dir"):
        assert key in text


def test_choices_match_the_implementations():
    from hardmine import config
    from hardmine.models import dense_head
    from hardmine.models.backbones import BACKBONES

    assert set(config.BACKBONE_NAMES) == set(BACKBONES)
    # the plain functions plus "ghm" (GHM-C / GHM-R, stateful modules held by the head)
    assert config.DENSE_CLS_LOSSES == dense_head.CLS_LOSS_NAMES
    assert config.DENSE_REG_LOSSES == dense_head.REG_LOSS_NAMES


def test_new_samplers_build_from_their_config_sections():
    from hardmine.models.build import build_sampler
    from hardmine.sampling import HardNegativeSampler, IoUBalancedSampler, IoUThresholds

    cfg = load_config(
        None,
        [
            "roi_head.sampler=iou_balanced",
            "roi_head.batch_size_per_image=128",
            "roi_head.fg_fraction=0.5",
            "roi_head.iou_balanced.num_bins=4",
            "roi_head.iou_balanced.floor_iou=0.05",
            "roi_head.iou_balanced.floor_fraction=0.2",
        ],
    )
    sampler = build_sampler(cfg.roi_head)
    assert type(sampler) is IoUBalancedSampler
    assert (sampler.batch_size_per_image, sampler.fg_fraction) == (128, 0.5)
    assert (sampler.num_bins, sampler.floor_iou, sampler.floor_fraction) == (4, 0.05, 0.2)
    assert sampler.thresholds == IoUThresholds(fg=0.5, bg_lo=0.1, bg_hi=0.5)

    cfg = load_config(
        None,
        [
            "roi_head.sampler=hard_negative",
            "roi_head.hard_negative.neg_pos_ratio=2",
            "roi_head.hard_negative.min_negatives_per_image=8",
        ],
    )
    sampler = build_sampler(cfg.roi_head)
    assert type(sampler) is HardNegativeSampler
    assert (sampler.neg_pos_ratio, sampler.min_negatives_per_image) == (2.0, 8)
    # SSD's background starts at IoU 0, not at the head's bg_iou_lo (0.1).
    assert sampler.thresholds == IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("roi_head.iou_balanced.num_bins=0", "roi_head.iou_balanced.num_bins: must be >= 1"),
        ("rpn.iou_balanced.floor_iou=0", "rpn.iou_balanced.floor_iou: in (0, 1] or null"),
        (
            "dense_head.iou_balanced.floor_fraction=2",
            "dense_head.iou_balanced.floor_fraction: must be in [0, 1]",
        ),
        ("roi_head.hard_negative.neg_pos_ratio=-3", "roi_head.hard_negative.neg_pos_ratio: must be >= 0"),
        (
            "roi_head.hard_negative.min_negatives_per_image=-1",
            "roi_head.hard_negative.min_negatives_per_image: must be >= 0",
        ),
        ("rpn.hard_negative.bg_iou_lo=0.4", "rpn.hard_negative.bg_iou_lo: must be in [0, rpn.bg_iou_hi]"),
    ],
)
def test_new_sampler_options_validated(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_preset_builds_its_model(path):
    from hardmine.models.build import build_model
    from hardmine.sampling import SAMPLERS

    # Fast R-CNN presets name proposal files that only a trained Faster R-CNN writes; building needs none.
    overrides = ["data.train_proposals=x.pt"] if "fast_rcnn" in path.name else []
    cfg = load_config(path, overrides)
    model = build_model(cfg, num_classes=3)
    sections = {"roi": cfg.roi_head, "rpn": cfg.rpn, "dense": cfg.dense_head}
    for name, head in model.heads.items():
        assert type(head.sampler) is SAMPLERS[sections[name].sampler]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dense_head.ohem.batch_size_per_image=-1", "dense_head.ohem.batch_size_per_image: must be > 0"),
        ("rpn.fg_fraction=1.01", "rpn.fg_fraction: must be in [0, 1]"),
        ("rpn.pre_nms_top_n_train=0", "rpn.pre_nms_top_n_train: must be > 0"),
        ("rpn.nms_thresh=1.5", "rpn.nms_thresh: must be in (0, 1]"),
        ("roi_head.smooth_l1_beta=-1", "roi_head.smooth_l1_beta: must be >= 0"),
        ("roi_head.score_thresh=-0.1", "roi_head.score_thresh: must be in [0, 1]"),
        ("dense_head.nms_thresh=0", "dense_head.nms_thresh: must be in (0, 1]"),
        ("dense_head.detections_per_img=0", "dense_head.detections_per_img: must be > 0"),
        ("roi_head.representation_size=0", "roi_head.representation_size: must be > 0"),
        ("dense_head.focal_gamma=-1", "dense_head.focal_gamma: must be >= 0"),
        ("dense_head.topk_candidates=0", "dense_head.topk_candidates: must be > 0"),
        ("model.aspect_ratios=[]", "model.aspect_ratios: needs at least one ratio"),
        ("model.anchor_sizes=[[32], []]", "model.anchor_sizes: one non-empty list of positive sizes"),
        ("model.fpn_channels=-8", "model.fpn_channels: must be >= 0"),
        ("data.class_names=[cat, cat]", "data.class_names: names must be non-empty and distinct"),
        ("data.synth_train=0", "data.synth_train: must be > 0"),
        ("data.synth_dir=", "data.synth_dir: must not be empty"),
        ("data.on_invalid=ignore", "data.on_invalid='ignore' is not allowed; choose from stop, skip"),
        (
            "data.check_images=full",
            "data.check_images='full' is not allowed; choose from none, header, decode",
        ),
        ("solver.momentum=1", "solver.momentum: must be in [0, 1)"),
        ("solver.weight_decay=-0.1", "solver.weight_decay: must be >= 0"),
        ("solver.gamma=0", "solver.gamma: must be > 0"),
        ("train.seed=-1", "train.seed: must be >= 0"),
        ("train.num_threads=-2", "train.num_threads: must be >= 0"),
        ("train.max_nonfinite_steps=-1", "train.max_nonfinite_steps: must be >= 0 (0 = never stop)"),
        ("train.eval_period=-1", "train.eval_period: must be >= 0 (0 = never)"),
        ("train.stop_at=-1", "train.stop_at: must be >= 0 (0 = train to solver.max_iter)"),
        ("train.device=gpu", "train.device: must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("output_dir=", "output_dir: must not be empty"),
    ],
)
def test_ranges_and_fault_handling_options_validated(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_training_validates_before_any_work(tmp_path):
    from hardmine.engine.training import train

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}"])
    cfg.roi_head.batch_size_per_image = -4  # set in code, past load_config's validation
    with pytest.raises(ConfigError, match="roi_head.batch_size_per_image: must be > 0"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_fault_handling_defaults():
    cfg = Config()
    assert (cfg.data.on_invalid, cfg.data.check_images, cfg.train.max_nonfinite_steps) == (
        "stop",
        "header",
        5,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("roi_head.label_smoothing=1.0", "roi_head.label_smoothing: must be in [0, 1) (0 = off)"),
        ("dense_head.label_smoothing=-0.1", "dense_head.label_smoothing: must be in [0, 1) (0 = off)"),
        (
            "roi_head.cls_loss=softmax_focal roi_head.label_smoothing=0.1",
            "roi_head.label_smoothing: applies to roi_head.cls_loss=ce only (got 'softmax_focal')",
        ),
    ],
)
def test_label_smoothing_options_validated(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split())
    assert message in str(info.value)


def test_stop_at_is_for_single_runs_only():
    with pytest.raises(ConfigError, match="train.stop_at: stops a single run; bootstrapping"):
        load_config(None, ["train.stop_at=5", "mining.rounds=1"])
