"""Loading every real source of ../shared/data the driving recipe uses, and the recipe's own checks."""

from pathlib import Path

import pytest

from prune_perception.compress.config import load_compress_config
from prune_perception.bags.frame_sources import iter_unlabelled_frames
from prune_perception.data.datasets import load_labelled_source, split_by_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared(yolox_nano_path):
    return yolox_nano_path.parents[1]


def _require(path):
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


def test_highway_photos_load_with_coco_ids(shared):
    items, names = load_labelled_source(_require(shared / "driving" / "highway" / "images"))
    assert names is None and len(items) == 2191
    ids = {int(c) for item in items for c in item.class_ids}
    assert ids <= {0, 2, 3, 5, 7} and sum(len(item.class_ids) for item in items) == 4711
    assert all(item.boxes_xyxy[:, 2:].max(initial=0) <= max(item.width, item.height) + 1 for item in items[:50])


def test_cctv_frames_load_and_split_by_camera(shared):
    items, _ = load_labelled_source(_require(shared / "driving" / "traffic_cctv" / "images"))
    assert len(items) == 900 and {int(c) for item in items for c in item.class_ids} <= {2, 5, 7}
    assert all((item.width, item.height) == (480, 270) for item in items[:20])
    train, validation = split_by_name(items, "^pagi_16112021")
    assert len(validation) == 171 and len(train) == 729
    assert not {item.path for item in train} & {item.path for item in validation}


def test_coco_extra_json_loads_with_the_models_class_order(shared):
    items, names = load_labelled_source(_require(shared / "coco_extra" / "instances.json"))
    assert len(items) == 160 and len(names) == 80 and names[0] == "person"
    assert all(item.path.exists() for item in items)
    assert sum(len(item.class_ids) for item in items) > 1000


def test_unlabelled_sources_load(shared):
    camvid = _require(shared / "driving" / "camvid" / "images")
    assert len(list(iter_unlabelled_frames([camvid], max_frames_per_source=3))) == 3
    videos = sorted(_require(shared / "video").glob("*.mp4"))
    assert len(videos) == 6
    for video in videos:
        frame = next(iter_unlabelled_frames([video], max_frames_per_source=1))
        assert frame.ndim == 3 and frame.shape[2] == 3


def test_driving_recipe_loads_and_checks_its_sources(shared):
    config = load_compress_config(ROOT / "config" / "compress_driving.yaml")
    assert [s.name for s in config.data.sets] == ["cctv", "highway", "coco"]
    assert config.input.camera == "960x540" and len(config.classes.keep) == 8
    from prune_perception.compress.pipeline import CompressionRun

    run = CompressionRun(config, progress=False)  # resolves the shape, the classes and every path, reads no image
    assert run.shape.hw == (256, 416) and run.subset.teacher_ids == (0, 1, 2, 3, 5, 7, 9, 11)
