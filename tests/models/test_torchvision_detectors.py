"""torchvision's COCO detectors as starting points (`model.torchvision_detector`).

Every test reads weight files that the tests write (randomly initialised torchvision detectors for
COCO's 91 classes, with random BatchNorm statistics so that every tensor is distinctive) into a
private torch hub cache; no real COCO weights are involved.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import detection, mobilenet_v3_large
from torchvision.ops.misc import FrozenBatchNorm2d

from hardmine.config import describe_options, load_config
from hardmine.engine.inference import load_trained
from hardmine.engine.training import train
from hardmine.errors import CheckpointError, ConfigError
from hardmine.models.build import build_model
from hardmine.models.torchvision_detectors import TORCHVISION_DETECTORS, load_torchvision_detector

MOBILENET = "fasterrcnn_mobilenet_v3_large_320_fpn"
NUM_CLASSES = 5
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: hardmine's state-dict prefixes -> torchvision's, for the modules that come from the COCO file.
FROM_FILE = (
    ("backbone.", "backbone."),
    ("rpn.head.", "rpn.head."),
    ("roi_head.box_head.", "roi_heads.box_head."),
    ("head.classification.conv.", "head.classification_head.conv."),
    ("head.regression.", "head.regression_head."),
)
#: The class-specific layers: hardmine's (new, for the user's classes) and the file's (not used).
TWO_STAGE_CLASS_LAYERS = {
    f"roi_head.box_predictor.{layer}.{p}" for layer in ("cls_score", "bbox_pred") for p in ("weight", "bias")
}
RETINANET_CLASS_LAYERS = {"head.classification.cls_logits.weight", "head.classification.cls_logits.bias"}
FILE_CLASS_LAYERS = {
    **{k: k.replace("roi_head.", "roi_heads.") for k in TWO_STAGE_CLASS_LAYERS},
    **{k: k.replace("classification.", "classification_head.") for k in RETINANET_CLASS_LAYERS},
}


def random_detector_state(name: str, num_classes: int = 91) -> dict[str, Tensor]:
    """torchvision's detector `name` with random weights and random BatchNorm statistics."""
    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def file_name(name: str) -> str:
    """The file name torchvision's weights enum gives the detector's COCO weights."""
    return Path(TORCHVISION_DETECTORS[name].weights.url).name


@pytest.fixture(scope="session")
def coco_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """A torch home whose hub cache gets a test-written file per detector on first request (each file
    written once per session: the ResNet-50 ones are 130-175 MB); removed at the end."""
    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)

    def with_file(name: str) -> Path:
        path = checkpoints / file_name(name)
        if not path.exists():
            torch.save(random_detector_state(name), path)
        return home

    yield with_file
    shutil.rmtree(home)


@pytest.fixture
def use_home(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Point torch's hub directory (through TORCH_HOME) at a folder for one test."""
    return lambda home: monkeypatch.setenv("TORCH_HOME", str(home))


def coco_config(name: str, *overrides: str):
    arch = TORCHVISION_DETECTORS[name].arch
    return load_config(None, [f"model.arch={arch}", f"model.torchvision_detector={name}", *overrides])


def file_key(key: str) -> str | None:
    """The torchvision state-dict key of hardmine's `key`; None for the class-specific layers."""
    for ours, theirs in FROM_FILE:
        if key.startswith(ours):
            return theirs + key.removeprefix(ours)
    return None


def assert_starts_from_file(
    model: nn.Module, path: Path, class_layers: set[str], own_state: frozenset[str] = frozenset()
) -> None:
    """Every tensor of `model` but `class_layers` and hardmine's `own_state` (buffers that are no
    weights) equals the file's; every tensor of the file but its class layers is used."""
    state = model.state_dict()
    saved = torch.load(path, weights_only=True)
    assert {k for k in state if file_key(k) is None} == class_layers | own_state
    for key, value in state.items():
        if key not in class_layers | own_state:
            assert torch.equal(value, saved[file_key(key)]), key
    used = {file_key(k) for k in state}
    unused = {k for k in saved if k not in used and not k.endswith("num_batches_tracked")}
    assert unused == {FILE_CLASS_LAYERS[k] for k in class_layers}


def test_mobilenet_detector_starts_from_the_file_with_new_class_layers(coco_home, use_home):
    home = coco_home(MOBILENET)
    use_home(home)
    model = build_model(coco_config(MOBILENET), NUM_CLASSES)
    path = home / "hub" / "checkpoints" / file_name(MOBILENET)
    assert_starts_from_file(model, path, TWO_STAGE_CLASS_LAYERS)
    predictor = model.roi_head.box_predictor
    assert predictor.cls_score.weight.shape == (NUM_CLASSES + 1, 1024)
    assert predictor.bbox_pred.weight.shape == (4 * (NUM_CLASSES + 1), 1024)
    # torchvision's architecture: MobileNetV3 levels at strides 16 and 32 (+ pool), 15 anchors each
    assert model.backbone.feature_names == ["0", "1"]
    assert model.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),) * 3
    assert model.rpn.head.cls_logits.out_channels == 15
    assert model.roi_head.box_roi_pool.output_size == (7, 7)


def test_frozen_stages_follow_trainable_layers(coco_home, use_home):
    use_home(coco_home(MOBILENET))
    # MobileNetV3's stages start at blocks 0, 2, 4, 7, 13 and 16: 3 trainable stages = blocks 7-16.
    for layers, first_trained in ((0, 17), (3, 7), (6, 0)):
        body = load_torchvision_detector(MOBILENET, layers).backbone.body
        for index, block in enumerate(body.values()):
            assert all(p.requires_grad == (index >= first_trained) for p in block.parameters()), (
                layers,
                index,
            )
    model = build_model(coco_config(MOBILENET, "model.trainable_layers=3"), NUM_CLASSES)
    assert isinstance(model.backbone.body["0"][1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.rpn.parameters())
    assert all(p.requires_grad for p in model.roi_head.parameters())


def test_one_training_step_changes_only_the_trained_layers(coco_home, use_home):
    use_home(coco_home(MOBILENET))
    torch.manual_seed(0)
    model = build_model(coco_config(MOBILENET, "model.min_size=128", "model.max_size=128"), NUM_CLASSES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    images = [torch.rand(3, 120, 128), torch.rand(3, 128, 100)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([2])},
        {
            "boxes": torch.tensor([[5.0, 5.0, 60.0, 40.0], [30.0, 50.0, 90.0, 120.0]]),
            "labels": torch.tensor([1, 5]),
        },
    ]
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert torch.equal(after["backbone.body.0.0.weight"], before["backbone.body.0.0.weight"])  # frozen
    assert torch.equal(
        after["backbone.body.7.block.0.1.running_mean"], before["backbone.body.7.block.0.1.running_mean"]
    )
    for key in (
        "backbone.body.16.0.weight",
        "backbone.fpn.layer_blocks.0.0.weight",
        "rpn.head.conv.0.0.weight",
        "roi_head.box_head.fc6.weight",
        "roi_head.box_predictor.cls_score.weight",
    ):
        assert not torch.equal(after[key], before[key]), key
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert [d["boxes"].shape[1] for d in detections] == [4, 4]
    assert all(((d["labels"] >= 1) & (d["labels"] <= NUM_CLASSES)).all() for d in detections)


def test_training_run_from_a_coco_detector_evaluates_and_reloads(coco_home, use_home, fast_overrides):
    use_home(coco_home(MOBILENET))
    overrides = [*fast_overrides, "solver.max_iter=1", "model.min_size=128", "model.max_size=128"]
    cfg = load_config(CONFIGS / "coco" / "faster_rcnn_mobilenet_v3_fpn.yaml", overrides)
    train(cfg)
    out = Path(cfg.output_dir)
    assert set(json.loads((out / "metrics.json").read_text())) >= {"AP", "AP50"}
    _, model, payload, _ = load_trained(out / "model_final.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, payload["model"][key]), key


def config_or_preset(name: str, preset: str | None):
    return load_config(CONFIGS / "coco" / preset) if preset else coco_config(name)


@pytest.mark.parametrize(
    ("name", "preset"),
    [("fasterrcnn_resnet50_fpn", None), ("fasterrcnn_resnet50_fpn_v2", "faster_rcnn_r50_fpn_v2.yaml")],
)
def test_resnet50_faster_rcnn_starts_from_the_file(name, preset, coco_home, use_home):
    home = coco_home(name)
    use_home(home)
    model = build_model(config_or_preset(name, preset), NUM_CLASSES)
    assert_starts_from_file(model, home / "hub" / "checkpoints" / file_name(name), TWO_STAGE_CLASS_LAYERS)
    assert model.roi_head.box_predictor.cls_score.weight.shape == (NUM_CLASSES + 1, 1024)
    body = model.backbone.body
    # trainable_layers=3: layer2-4 train; the stem and layer1 are frozen; frozen BatchNorm throughout
    assert not any(p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(
        p.requires_grad for layer in (body.layer2, body.layer3, body.layer4) for p in layer.parameters()
    )
    frozen_bn = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen_bn) == 53 and not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    # torchvision's v1 files were trained with eps 0 in frozen BatchNorm; v2's with the default
    assert {m.eps for m in frozen_bn} == ({0.0} if name == "fasterrcnn_resnet50_fpn" else {1e-5})


@pytest.mark.parametrize(
    ("name", "preset"),
    [("retinanet_resnet50_fpn", None), ("retinanet_resnet50_fpn_v2", "retinanet_r50_fpn_v2.yaml")],
)
def test_resnet50_retinanet_starts_from_the_file(name, preset, coco_home, use_home):
    home = coco_home(name)
    use_home(home)
    model = build_model(config_or_preset(name, preset), NUM_CLASSES)
    # the dense head's loss normaliser (an EMA of foreground counts) is hardmine's own state
    path = home / "hub" / "checkpoints" / file_name(name)
    assert_starts_from_file(model, path, RETINANET_CLASS_LAYERS, frozenset({"head.normalizer"}))
    logits = model.head.classification.cls_logits
    assert logits.weight.shape == (9 * NUM_CLASSES, 256, 3, 3)
    expected_bias = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    torch.testing.assert_close(logits.bias, expected_bias.expand(9 * NUM_CLASSES))
    norms = {type(m) for m in model.head.regression.conv.modules()}
    assert (nn.GroupNorm in norms) == (name == "retinanet_resnet50_fpn_v2")
    assert list(model.backbone(torch.rand(1, 3, 64, 64))) == ["0", "1", "2", "p6", "p7"]


def test_missing_file_names_the_path_and_the_url(tmp_path, use_home):
    use_home(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_model(coco_config(MOBILENET), NUM_CLASSES)
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / file_name(MOBILENET)) in message
    assert TORCHVISION_DETECTORS[MOBILENET].weights.url in message
    assert "copy it there" in message and "model.torchvision_detector=''" in message
    assert not (tmp_path / "hub" / "checkpoints" / file_name(MOBILENET)).exists()  # nothing downloaded


def write_file(home: Path, name: str, content: object) -> Path:
    path = home / "hub" / "checkpoints" / file_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def test_file_of_another_architecture_names_the_differing_keys(tmp_path, use_home):
    use_home(tmp_path)
    # the ImageNet MobileNetV3 classifier saved under the detector's name
    path = write_file(tmp_path, MOBILENET, mobilenet_v3_large().state_dict())
    with pytest.raises(CheckpointError) as info:
        build_model(coco_config(MOBILENET), NUM_CLASSES)
    message = str(info.value)
    assert message.startswith(f"{path}: does not fit torchvision's {MOBILENET}")
    assert "missing: backbone.body.0.0.weight" in message
    assert "unexpected: classifier.0.bias, classifier.0.weight" in message


def test_file_with_another_number_of_classes_names_the_layer_and_the_counts(tmp_path, use_home):
    use_home(tmp_path)
    path = write_file(tmp_path, MOBILENET, random_detector_state(MOBILENET, num_classes=21))
    with pytest.raises(CheckpointError) as info:
        build_model(coco_config(MOBILENET), NUM_CLASSES)
    message = str(info.value)
    assert message.startswith(f"{path}: not torchvision's COCO weights for {MOBILENET}")
    assert "layer roi_heads.box_predictor.cls_score is for 21 classes, expected 91" in message


def test_retinanet_file_with_another_number_of_classes(tmp_path, use_home):
    use_home(tmp_path)
    path = write_file(tmp_path, "retinanet_resnet50_fpn", random_detector_state("retinanet_resnet50_fpn", 21))
    with pytest.raises(
        CheckpointError, match="head.classification_head.cls_logits is for 21 classes, expected 91"
    ):
        build_model(coco_config("retinanet_resnet50_fpn"), NUM_CLASSES)
    path.unlink()  # 130 MB


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"<html>404 Not Found</html>", f"cannot be read as {MOBILENET}'s COCO weights"),
        (b"", "cannot be read as"),
        (
            {"model": {}, "config": {}},
            f"not a state dict of {MOBILENET}'s COCO weights: entries model, config",
        ),
        ([torch.zeros(2)], "holds a list, not a state dict"),
    ],
)
def test_file_that_is_not_a_state_dict(content, expected, tmp_path, use_home):
    use_home(tmp_path)
    path = tmp_path / "hub" / "checkpoints" / file_name(MOBILENET)
    if isinstance(content, bytes):
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    else:
        write_file(tmp_path, MOBILENET, content)
    with pytest.raises(CheckpointError) as info:
        build_model(coco_config(MOBILENET), NUM_CLASSES)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_the_model_family_must_be_the_detectors():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.torchvision_detector=retinanet_resnet50_fpn"])
    assert str(info.value) == (
        "model.torchvision_detector=retinanet_resnet50_fpn is a retinanet detector; it needs "
        "model.arch=retinanet, got model.arch=faster_rcnn"
    )
    with pytest.raises(ConfigError, match="needs model.arch=faster_rcnn, got model.arch=fast_rcnn"):
        load_config(
            None,
            [f"model.torchvision_detector={MOBILENET}", "model.arch=fast_rcnn", "data.train_proposals=p.pt"],
        )


@pytest.mark.parametrize(
    ("name", "override", "fixed"),
    [
        (MOBILENET, "roi_head.representation_size=512", "1024"),
        (MOBILENET, "model.backbone=resnet50_fpn", "'mobilenet_v3_fpn'"),
        (MOBILENET, "model.fpn_channels=128", "256"),
        (
            MOBILENET,
            "model.anchor_sizes=[[32],[64],[128]]",
            "[[32, 64, 128, 256, 512], [32, 64, 128, 256, 512], [32, 64, 128, 256, 512]]",
        ),
        (MOBILENET, "model.aspect_ratios=[1.0]", "[0.5, 1.0, 2.0]"),
        (MOBILENET, "roi_head.roi_output_size=14", "7"),
        (MOBILENET, "roi_head.sampling_ratio=0", "2"),
        ("retinanet_resnet50_fpn_v2", "dense_head.head_norm=none", "'group'"),
        ("retinanet_resnet50_fpn", "dense_head.num_convs=2", "4"),
    ],
)
def test_options_the_detector_fixes_cannot_be_set_to_other_values(name, override, fixed):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as info:
        coco_config(name, override)
    assert str(info.value).startswith(f"{key}=")
    assert f"model.torchvision_detector={name} fixes it to {fixed}" in str(info.value)


def test_options_at_the_detectors_own_values_or_defaults_are_accepted():
    own_anchors = "model.anchor_sizes=" + str([[32, 64, 128, 256, 512]] * 3)
    coco_config(
        MOBILENET,
        "roi_head.representation_size=1024",
        "model.backbone=mobilenet_v3_fpn",
        "model.pretrained=true",
        own_anchors,
        "model.trainable_layers=6",
    )
    coco_config("retinanet_resnet50_fpn", "dense_head.head_norm=none", "model.fpn_channels=256")
    coco_config("retinanet_resnet50_fpn")  # head_norm at its default: the detector's own (none) is used
    coco_config("fasterrcnn_resnet50_fpn", "roi_head.representation_size=256")  # the default
    with pytest.raises(
        ConfigError,
        match=r"model.trainable_layers: fasterrcnn_resnet50_fpn has 5 backbone stages; choose 0 to 5, got 6",
    ):
        coco_config("fasterrcnn_resnet50_fpn", "model.trainable_layers=6")


def test_presets_and_help():
    for preset, name in (
        ("faster_rcnn_r50_fpn_v2.yaml", "fasterrcnn_resnet50_fpn_v2"),
        ("faster_rcnn_mobilenet_v3_fpn.yaml", MOBILENET),
        ("retinanet_r50_fpn_v2.yaml", "retinanet_resnet50_fpn_v2"),
    ):
        assert load_config(CONFIGS / "coco" / preset).model.torchvision_detector == name
    assert "model.torchvision_detector=''" in describe_options()
    assert set(TORCHVISION_DETECTORS) == {
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "retinanet_resnet50_fpn",
        "retinanet_resnet50_fpn_v2",
    }
