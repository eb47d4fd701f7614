"""Labelled datasets and unlabelled frame sources (folders, videos, rosbag2 in MCAP and sqlite3)."""

import json

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from prune_perception.bags.frame_sources import iter_bag_frames, iter_unlabelled_frames
from prune_perception.data.datasets import (
    load_coco_json,
    load_yolo_dataset,
    split_dataset,
)
from prune_perception.data.frame_source import FrameSourceError

TYPESTORE = get_typestore(Stores.ROS2_KILTED)


def write_bag(path, frames, storage, compressed=False, topic="/camera/image_raw"):
    Image = TYPESTORE.types["sensor_msgs/msg/Image"]
    CompressedImage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
    Header = TYPESTORE.types["std_msgs/msg/Header"]
    Time = TYPESTORE.types["builtin_interfaces/msg/Time"]
    String = TYPESTORE.types["std_msgs/msg/String"]
    msgtype = CompressedImage.__msgtype__ if compressed else Image.__msgtype__
    with Writer(path, version=9, storage_plugin=storage) as writer:
        images = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        text = writer.add_connection("/status", String.__msgtype__, typestore=TYPESTORE)
        for index, frame in enumerate(frames):
            header = Header(stamp=Time(sec=index, nanosec=0), frame_id="camera")
            if compressed:
                msg = CompressedImage(header=header, format="jpeg", data=np.frombuffer(cv2.imencode(".png", frame)[1], np.uint8))
            else:
                msg = Image(header=header, height=frame.shape[0], width=frame.shape[1], encoding="bgr8",
                            is_bigendian=0, step=frame.shape[1] * 3, data=frame.reshape(-1))
            writer.write(images, index * 40_000_000, TYPESTORE.serialize_cdr(msg, msgtype))
            writer.write(text, index * 40_000_000, TYPESTORE.serialize_cdr(String(data="ok"), String.__msgtype__))


def test_yolo_dataset_from_coco128(coco128_dir):
    items = load_yolo_dataset(coco128_dir / "images")
    assert len(items) == 128
    # The data README counts 941 label lines, but two label files (000000000656, 000000000659)
    # have no image in the folder: 929 boxes belong to the 128 images.
    assert sum(len(item.class_ids) for item in items) == 929
    first = items[0]
    assert first.read().shape[:2] == (first.height, first.width)
    assert np.all(first.boxes_xyxy[:, 2] > first.boxes_xyxy[:, 0])


def test_coco_json_dataset(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 10, "bbox": [5, 5, 5, 5], "iscrowd": 1},
        ],
        "categories": [{"id": 10, "name": "person"}, {"id": 3, "name": "car"}],
    }))
    items, names = load_coco_json(tmp_path / "ann.json", tmp_path)
    assert names == ["car", "person"]
    np.testing.assert_array_equal(items[0].boxes_xyxy, [[1, 2, 11, 22]])
    assert items[0].class_ids.tolist() == [0] and items[0].read().shape == (40, 60, 3)


def test_split_is_deterministic_and_disjoint():
    train, validation = split_dataset(list(range(100)), 0.25, seed=4)
    assert len(validation) == 25 and not set(train) & set(validation)
    assert split_dataset(list(range(100)), 0.25, seed=4) == (train, validation)
    assert split_dataset(list(range(100)), 0.25, seed=5)[1] != validation


@pytest.mark.parametrize("storage, suffix", [(StoragePlugin.MCAP, "mcap"), (StoragePlugin.SQLITE3, "db3")])
@pytest.mark.parametrize("compressed", [False, True])
def test_bag_frames_round_trip(dashcam_frames, tmp_path, storage, suffix, compressed):
    frames = [cv2.resize(f, (160, 90)) for f in dashcam_frames[:5]]
    write_bag(tmp_path / "bag", frames, storage, compressed=compressed)
    read = list(iter_bag_frames(tmp_path / "bag"))
    assert len(read) == 5
    for original, decoded in zip(frames, read):
        np.testing.assert_array_equal(decoded, original)  # raw and PNG are lossless
    assert list((tmp_path / "bag").glob(f"*.{suffix}"))


def test_unlabelled_frames_from_folder_video_and_bag(dashcam_path, coco128_dir, dashcam_frames, tmp_path):
    write_bag(tmp_path / "bag", [cv2.resize(f, (64, 36)) for f in dashcam_frames[:6]], StoragePlugin.MCAP)
    frames = list(iter_unlabelled_frames([coco128_dir / "images", dashcam_path, tmp_path / "bag"],
                                         max_frames_per_source=4, stride=2))
    assert len(frames) == 4 + 4 + 3
    assert frames[4].shape == (540, 960, 3) and frames[-1].shape == (36, 64, 3)


def test_bad_bags_give_clear_errors(dashcam_frames, tmp_path):
    write_bag(tmp_path / "bag", [cv2.resize(dashcam_frames[0], (32, 18))], StoragePlugin.MCAP)
    with pytest.raises(FrameSourceError, match="does not exist"):
        list(iter_bag_frames(tmp_path / "bag", topic="/front/image"))
    with pytest.raises(FrameSourceError, match="is a std_msgs/msg/String"):
        list(iter_bag_frames(tmp_path / "bag", topic="/status"))
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 64)
    with pytest.raises(FrameSourceError, match="cannot read bag"):
        list(iter_bag_frames(broken))
