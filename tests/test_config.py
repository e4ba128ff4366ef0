"""Config: defaults, YAML presets, key=value overrides and validation errors naming the key."""

import dataclasses
from pathlib import Path

import pytest

from hardmine.config import (
    SEGMENTATION_ARCHS,
    Config,
    config_from_dict,
    describe_options,
    load_config,
    saved_config_with_defaults,
)
from hardmine.errors import ConfigError
from hardmine.losses import BCE, CLS_LOSSES, REG_LOSSES, CrossEntropy, SigmoidFocal, SmoothL1
from hardmine.options import option_fields
from hardmine.sampling import SAMPLERS, IoUThresholds, NoSampler, OHEMSampler, RandomSampler
from hardmine.segmentation.pixel_losses import PixelFocal
from hardmine.segmentation.pixel_sampling import OhemThreshold, OhemTopK

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def samplers_with(option: str) -> str:
    """The names of the samplers that have `option`, as the error messages list them."""
    return "|".join(name for name, cls in SAMPLERS.items() if option in {f.name for f in option_fields(cls)})


def test_defaults_match_the_papers():
    cfg = Config()
    assert cfg.roi_head.sampler == RandomSampler(batch_size_per_image=512, fg_fraction=0.25)
    assert cfg.roi_head.thresholds() == IoUThresholds(fg=0.5, bg_lo=0.1, bg_hi=0.5)
    assert (cfg.roi_head.cls_loss, cfg.roi_head.reg_loss) == (CrossEntropy(), SmoothL1(beta=1 / 9))
    assert cfg.rpn.sampler == RandomSampler(batch_size_per_image=256, fg_fraction=0.5)
    assert cfg.rpn.thresholds() == IoUThresholds(fg=0.7, bg_lo=0.0, bg_hi=0.3)
    assert (cfg.rpn.cls_loss, cfg.rpn.reg_loss) == (BCE(alpha=-1.0), SmoothL1(beta=1 / 9))
    assert cfg.dense_head.sampler == NoSampler()
    assert cfg.dense_head.thresholds() == IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4)
    assert cfg.dense_head.cls_loss == SigmoidFocal(alpha=0.25, gamma=2.0)


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
        (
            "roi_head.sampler=bogus",
            f"roi_head.sampler='bogus' is not allowed; choose from {', '.join(SAMPLERS)}",
        ),
        ("roi_head.sampler.batch_size_per_image=-4", "roi_head.sampler.batch_size_per_image: must be > 0"),
        ("roi_head.sampler.fg_fraction=1.5", "roi_head.sampler.fg_fraction: must be in [0, 1]"),
        (
            "roi_head.sampler.batch_size_per_image=many",
            "roi_head.sampler.batch_size_per_image: expected int, got 'many'",
        ),
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


def test_choices_come_from_the_implementations():
    from hardmine import config
    from hardmine.models import dense_head
    from hardmine.models.backbones import BACKBONES

    assert config.BACKBONE_NAMES == tuple(BACKBONES)
    fields = {f.name: f for f in dataclasses.fields(config.DenseHeadConfig)}
    assert fields["head_norm"].metadata["choices"] == dense_head.HEAD_NORMS
    assert config.SAMPLER_NAMES == tuple(SAMPLERS)


def test_samplers_build_from_their_config_sections():
    from hardmine.models.build import build_sampler
    from hardmine.sampling import HardNegativeSampler, IoUBalancedSampler

    cfg = load_config(
        None,
        [
            "roi_head.sampler=iou_balanced",
            "roi_head.sampler.batch_size_per_image=128",
            "roi_head.sampler.fg_fraction=0.5",
            "roi_head.sampler.num_bins=4",
            "roi_head.sampler.floor_iou=0.05",
            "roi_head.sampler.floor_fraction=0.2",
        ],
    )
    sampler = build_sampler(cfg.roi_head)
    assert type(sampler) is IoUBalancedSampler and sampler is not cfg.roi_head.sampler
    assert (sampler.batch_size_per_image, sampler.fg_fraction) == (128, 0.5)
    assert (sampler.num_bins, sampler.floor_iou, sampler.floor_fraction) == (4, 0.05, 0.2)
    assert sampler.thresholds == IoUThresholds(fg=0.5, bg_lo=0.1, bg_hi=0.5)

    cfg = load_config(
        None,
        ["roi_head.sampler={name: hard_negative, neg_pos_ratio: 2, min_negatives_per_image: 8}"],
    )
    sampler = build_sampler(cfg.roi_head)
    assert type(sampler) is HardNegativeSampler
    assert (sampler.neg_pos_ratio, sampler.min_negatives_per_image) == (2.0, 8)
    # SSD's background starts at IoU 0 (its paper value), not at the RoI head's usual 0.1 ...
    assert sampler.thresholds == IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)
    # ... unless the head says otherwise: bg_iou_lo is set in one place, the head
    cfg = load_config(None, ["roi_head.sampler=hard_negative", "roi_head.bg_iou_lo=0.2"])
    assert build_sampler(cfg.roi_head).thresholds == IoUThresholds(fg=0.5, bg_lo=0.2, bg_hi=0.5)


def test_a_sampler_named_alone_gets_its_defaults_and_naming_it_again_keeps_its_options():
    cfg = load_config(None, ["roi_head.sampler=ohem"])
    assert cfg.roi_head.sampler == OHEMSampler()
    cfg = load_config(
        None, ["roi_head.sampler=ohem", "roi_head.sampler.nms_thresh=null", "roi_head.sampler=ohem"]
    )
    assert cfg.roi_head.sampler.nms_thresh is None
    cfg = load_config(None, ["roi_head.sampler.name=ohem", "roi_head.sampler.per_image=true"])
    assert cfg.roi_head.sampler == OHEMSampler(per_image=True)
    cfg = load_config(None, ["roi_head.sampler.batch_size_per_image=128", "roi_head.sampler=none"])
    assert cfg.roi_head.sampler == NoSampler()  # another sampler: that one's defaults
    cfg = load_config(None, ["dense_head.cls_loss=bce", "dense_head.cls_loss.alpha=-1"])
    assert cfg.dense_head.cls_loss == BCE(alpha=-1.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "roi_head.ohem.batch_size_per_image=64",
            "config key 'roi_head.ohem.batch_size_per_image' was replaced by "
            "roi_head.sampler.batch_size_per_image (with roi_head.sampler=ohem)",
        ),
        (
            "roi_head.batch_size_per_image=512",
            "config key 'roi_head.batch_size_per_image' was replaced by "
            "roi_head.sampler.batch_size_per_image "
            f"(with roi_head.sampler={samplers_with('batch_size_per_image')})",
        ),
        ("rpn.ohem.bg_iou_lo=0.1", "config key 'rpn.ohem.bg_iou_lo' was replaced by rpn.bg_iou_lo"),
        (
            "dense_head.focal_alpha=0.5",
            "config key 'dense_head.focal_alpha' was replaced by dense_head.cls_loss.alpha "
            "(with dense_head.cls_loss=focal|bce)",
        ),
        (
            "roi_head.label_smoothing=0.1",
            "config key 'roi_head.label_smoothing' was replaced by roi_head.cls_loss.label_smoothing "
            "(with roi_head.cls_loss=ce)",
        ),
        (
            "rpn.smooth_l1_beta=0.1",
            "config key 'rpn.smooth_l1_beta' was replaced by rpn.reg_loss.beta "
            "(with rpn.reg_loss=smooth_l1|balanced_l1)",
        ),
        (
            "dense_head.ghmr_loss_weight=5",
            "config key 'dense_head.ghmr_loss_weight' was replaced by dense_head.reg_loss.loss_weight "
            "(with dense_head.reg_loss=ghm)",
        ),
        (
            "roi_head.iou_balanced={num_bins: 4}",
            "config key 'roi_head.iou_balanced' was replaced by roi_head.sampler "
            "(roi_head.sampler=iou_balanced, or a mapping {name: iou_balanced, OPTION: VALUE})",
        ),
    ],
)
def test_removed_keys_fail_naming_the_new_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message


def test_an_old_preset_fails_naming_the_file_and_the_new_key(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("roi_head:\n  sampler: ohem\n  ohem:\n    batch_size_per_image: 32\n")
    with pytest.raises(
        ConfigError, match=r"old.yaml: config key 'roi_head.ohem' was replaced by roi_head.sampler"
    ):
        load_config(old)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "roi_head.sampler=iou_balanced roi_head.sampler.num_bins=0",
            "roi_head.sampler.num_bins: must be >= 1",
        ),
        (
            "rpn.sampler=iou_balanced rpn.sampler.floor_iou=0",
            "rpn.sampler.floor_iou: must be in (0, 1] or null",
        ),
        (
            "dense_head.sampler=iou_balanced dense_head.sampler.floor_fraction=2",
            "dense_head.sampler.floor_fraction: must be in [0, 1]",
        ),
        (
            "roi_head.sampler=hard_negative roi_head.sampler.neg_pos_ratio=-3",
            "roi_head.sampler.neg_pos_ratio: must be >= 0",
        ),
        (
            "roi_head.sampler=hard_negative roi_head.sampler.min_negatives_per_image=-1",
            "roi_head.sampler.min_negatives_per_image: must be >= 0",
        ),
        (
            "roi_head.sampler=ohem roi_head.sampler.mode=naive",
            "roi_head.sampler.mode: must be one of 'two_pass', 'loss_mask', got 'naive'",
        ),
        (
            "rpn.bg_iou_lo=0.4",
            "rpn.fg_iou/bg_iou_lo/bg_iou_hi: need 0 <= bg_iou_lo <= bg_iou_hi <= fg_iou <= 1",
        ),
        (
            "roi_head.sampler.nms_thresh=0.5",
            "unknown config key 'roi_head.sampler.nms_thresh': 'nms_thresh' is not an option of "
            "roi_head.sampler='random'; valid: roi_head.sampler.name, roi_head.sampler.batch_size_per_image, "
            "roi_head.sampler.fg_fraction",
        ),
        (
            "roi_head.cls_loss=focal",
            "roi_head.cls_loss='focal' is not allowed; choose from ce, softmax_focal",
        ),
        ("rpn.cls_loss=ce", "rpn.cls_loss='ce' is not allowed; choose from focal, bce, ghm"),
        ("roi_head.iterative.rounds=-1", "roi_head.iterative.rounds: must be >= 0 (0 = off)"),
    ],
)
def test_sampler_and_loss_options_validated_with_their_full_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split())
    assert message in str(info.value)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_preset_builds_its_model(path):
    from hardmine.models.build import build_model

    # Fast R-CNN presets name proposal files that only a trained Faster R-CNN writes; building needs none.
    overrides = ["data.train_proposals=x.pt"] if "fast_rcnn" in path.name else []
    cfg = load_config(path, overrides)
    model = build_model(cfg, num_classes=3)
    if cfg.model.arch in SEGMENTATION_ARCHS:  # a segmentation model: its pixel loss and sampler
        assert model.sampler == cfg.seg_head.sampler and model.criterion.loss.declaration == cfg.seg_head.loss
        return
    sections = {"roi": cfg.roi_head, "rpn": cfg.rpn, "dense": cfg.dense_head}
    for name, head in model.heads.items():
        section = sections[name]
        assert head.sampler == dataclasses.replace(section.sampler, thresholds=section.thresholds())
        assert (head.criterion.cls_loss, head.criterion.reg_loss) == (section.cls_loss, section.reg_loss)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "dense_head.sampler={name: ohem, batch_size_per_image: -1}",
            "dense_head.sampler.batch_size_per_image: must be > 0",
        ),
        ("rpn.sampler.fg_fraction=1.01", "rpn.sampler.fg_fraction: must be in [0, 1]"),
        ("rpn.pre_nms_top_n_train=0", "rpn.pre_nms_top_n_train: must be > 0"),
        ("rpn.nms_thresh=1.5", "rpn.nms_thresh: must be in (0, 1]"),
        ("roi_head.reg_loss.beta=-1", "roi_head.reg_loss.beta: must be >= 0"),
        ("roi_head.score_thresh=-0.1", "roi_head.score_thresh: must be in [0, 1]"),
        ("dense_head.nms_thresh=0", "dense_head.nms_thresh: must be in (0, 1]"),
        ("dense_head.detections_per_img=0", "dense_head.detections_per_img: must be > 0"),
        ("roi_head.representation_size=0", "roi_head.representation_size: must be > 0"),
        ("dense_head.cls_loss.gamma=-1", "dense_head.cls_loss.gamma: must be >= 0"),
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
    cfg.roi_head.sampler.batch_size_per_image = -4  # set in code, past load_config's validation
    with pytest.raises(ConfigError, match="roi_head.sampler.batch_size_per_image: must be > 0"):
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
        (
            "roi_head.cls_loss.label_smoothing=1.0",
            "roi_head.cls_loss.label_smoothing: must be in [0, 1) (0 = off)",
        ),
        (
            "dense_head.cls_loss.label_smoothing=-0.1",
            "dense_head.cls_loss.label_smoothing: must be in [0, 1) (0 = off)",
        ),
        (
            "roi_head.cls_loss=softmax_focal roi_head.cls_loss.label_smoothing=0.1",
            "'label_smoothing' is not an option of roi_head.cls_loss='softmax_focal'",
        ),
    ],
)
def test_label_smoothing_options_validated(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, override.split())
    assert message in str(info.value)


# --- presets that start from another ----------------------------------------------------------------


def test_a_preset_starts_from_its_base_by_name_or_relative_path(tmp_path):
    (tmp_path / "root.yaml").write_text(
        "solver:\n  lr: 0.5\n  max_iter: 7\nroi_head:\n  sampler: {name: random, batch_size_per_image: 64}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "middle.yaml").write_text("base: ../root.yaml\nsolver:\n  lr: 0.25\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: middle\nroi_head:\n  sampler: ohem\n")
    cfg = load_config(tmp_path / "sub" / "leaf.yaml", ["solver.max_iter=9"])
    assert (cfg.solver.lr, cfg.solver.max_iter) == (0.25, 9)  # the nearer file wins, overrides last
    assert cfg.roi_head.sampler == OHEMSampler()  # a sampler named anew: its defaults, not the base's B
    middle = load_config(tmp_path / "sub" / "middle.yaml")
    assert middle.roi_head.sampler == RandomSampler(batch_size_per_image=64)


def test_the_five_repeated_rpn_blocks_come_from_faster_rcnn_tiny():
    tiny = load_config(CONFIGS / "faster_rcnn_tiny.yaml")
    for name in ("ohem", "iou_balanced", "hard_negative", "freebies", "sampling_free"):
        cfg = load_config(CONFIGS / f"faster_rcnn_{name}.yaml")
        assert "rpn:\n  pre_nms" not in (CONFIGS / f"faster_rcnn_{name}.yaml").read_text()
        for key in (
            "pre_nms_top_n_train",
            "post_nms_top_n_train",
            "pre_nms_top_n_test",
            "post_nms_top_n_test",
        ):
            assert getattr(cfg.rpn, key) == getattr(tiny.rpn, key)


def test_preset_cycles_and_missing_bases_are_config_errors_naming_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(
        ConfigError,
        match=r"a.yaml: base 'b' makes the presets inherit in a cycle: \S*b.yaml -> \S*a.yaml -> \S*b.yaml",
    ):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere\n")
    with pytest.raises(
        ConfigError, match=r"c.yaml: base preset 'nowhere' not found \(no file .*nowhere.yaml\)"
    ):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a, b]\n")
    with pytest.raises(ConfigError, match=r"d.yaml: base: expected a preset name or a path"):
        load_config(tmp_path / "d.yaml")


# --- --help and checkpoints derive from the declarations ---------------------------------------------


def test_help_lists_every_sampler_and_loss_with_its_options():
    text = describe_options()
    for title, table in (
        ("Samplers", SAMPLERS),
        ("Classification losses", CLS_LOSSES),
        ("Box losses", REG_LOSSES),
    ):
        section = text[text.index(title) :]
        for name, cls in table.items():
            assert f"  {name}: " in section
            for f in option_fields(cls):
                assert f"{f.name}=" in section and f.metadata["help"] in section
    assert "roi_head.sampler='random'" in text and "roi_head.sampler.batch_size_per_image=512" in text


def test_a_saved_config_is_completed_with_the_defaults_of_its_own_sampler():
    saved = load_config(None, ["roi_head.sampler=none"]).to_dict()
    completed = saved_config_with_defaults(saved)
    assert completed["roi_head"]["sampler"] == {"name": "none"}  # not mixed with random's options
    del saved["roi_head"]["sampler"]["name"], saved["rpn"]["sampler"]["fg_fraction"]
    completed = saved_config_with_defaults(saved)
    assert completed["roi_head"]["sampler"] == {
        "name": "random",
        "batch_size_per_image": 512,
        "fg_fraction": 0.25,
    }
    assert completed["rpn"]["sampler"]["fg_fraction"] == 0.5


def test_stop_at_is_for_single_runs_only():
    with pytest.raises(ConfigError, match="train.stop_at: stops a single run; bootstrapping"):
        load_config(None, ["train.stop_at=5", "mining.rounds=1"])


def test_the_configuration_docs_name_every_sampler_loss_and_preset():
    text = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    for name in [*SAMPLERS, *CLS_LOSSES, *REG_LOSSES]:
        assert f"| `{name}`" in text, name
    for path in [*CONFIGS.glob("*.yaml"), *CONFIGS.glob("coco/*.yaml")]:
        assert f"configs/{path.relative_to(CONFIGS)}" in text, path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["seg_head.sampler=ohem", "seg_head.sampler.thresh=0"],
            "seg_head.sampler.thresh: must be in (0, 1]",
        ),
        (["seg_head.sampler={name: topk, fraction: 1.5}"], "seg_head.sampler.fraction: must be in (0, 1]"),
        (["seg_head.sampler.min_kept=5"], "'min_kept' is not an option of seg_head.sampler='none'"),
        (
            ["seg_head.loss=dice"],
            "seg_head.loss='dice' is not allowed; choose from ce, focal, class_balanced",
        ),
        (["seg_head.loss=focal", "seg_head.loss.alpha=2"], "seg_head.loss.alpha: must be in [0, 1] or null"),
        (["seg_head.normalizer=sum"], "seg_head.normalizer='sum' is not allowed; choose from kept, all"),
        (["seg_head.feature_level=-1"], "seg_head.feature_level: must be >= 0"),
        (["seg_head.atrous_rates=[]"], "seg_head.atrous_rates: needs positive dilation rates"),
        (["data.augment=[hflip,iou_crop]"], "data.augment: model.arch=fcn: iou_crop move(s) boxes only"),
        (["data.mixup_prob=0.5"], "data.mixup_prob: is a detection option; model.arch=fcn (segmentation)"),
        (["eval.hflip=true"], "eval.hflip: is a detection option"),
        (["model.arch=deeplabv3", "data.batch_size=1"], "data.batch_size: model.arch=deeplabv3 needs >= 2"),
    ],
)
def test_segmentation_options_are_checked_and_named(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "segmentation_tiny.yaml", overrides)
    assert message in str(info.value)


def test_segmentation_sampler_and_loss_choices_keep_their_sources_defaults():
    cfg = load_config(CONFIGS / "segmentation_tiny.yaml", ["seg_head.sampler=ohem", "seg_head.loss=focal"])
    assert cfg.seg_head.sampler == OhemThreshold(thresh=0.7, min_kept=100_000, min_kept_area=512 * 1024)
    assert cfg.seg_head.loss == PixelFocal(gamma=2.0, alpha=None)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["seg_head"]["sampler"] == {
        "name": "ohem",
        "thresh": 0.7,
        "min_kept": 100_000,
        "min_kept_area": 524_288,
    }
    assert load_config(CONFIGS / "segmentation_topk.yaml").seg_head.sampler == OhemTopK(fraction=0.2)
