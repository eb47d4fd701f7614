"""Camera rosbag2 files: write frames (+ camera_info + ground truth) and read them back, with rosbags.

A camera bag holds one image topic (``sensor_msgs/Image`` bgr8 or ``CompressedImage`` jpeg),
its ``camera_info``, and optionally ground truth as ``vision_msgs/Detection2DArray`` whose
header stamps equal the images'. Storage is MCAP (default) or sqlite3. A bag is written into a
temporary folder beside the destination and renamed when complete, so an interrupted run leaves
no half-written bag.

Example:
    >>> with CameraBagWriter("drive_bag", fps=10) as bag:
    ...     bag.write(image_bgr, stamp_ns, boxes_xyxy, class_ids)
    >>> for frame in iter_camera_frames("drive_bag"):
    ...     frame.stamp_ns, frame.image
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from prune_perception.bags.typestore import bag_typestore
from prune_perception.data.frame_source import FrameSourceError
from prune_perception.data.image_codec import compressed_image_to_array, raw_image_to_array, to_bgr
from prune_perception.errors import ImageFormatError
from prune_perception.files import output_write_error
from prune_perception.sim.scenes import pinhole_intrinsics
from prune_perception.stamps import ns_to_sec_nanosec, stamp_to_ns

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
STORAGES = ("mcap", "sqlite3")


class BagError(FrameSourceError):
    """A bag cannot be read or written as asked (broken file, missing topic, wrong type)."""


@dataclass(frozen=True)
class CameraTopics:
    image: str = "/camera/image_raw"
    camera_info: str = "/camera/camera_info"
    ground_truth: str = "/camera/ground_truth"

    @classmethod
    def for_image_topic(cls, image_topic: str, compressed: bool) -> "CameraTopics":
        base = image_topic.rsplit("/", 1)[0] if "/" in image_topic.strip("/") else ""
        return cls(image_topic + ("/compressed" if compressed and not image_topic.endswith("/compressed") else ""),
                   f"{base}/camera_info", f"{base}/ground_truth")


def _stamp(typestore: Any, stamp_ns: int) -> Any:
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    return typestore.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


class CameraBagWriter:
    """Writes a camera bag; use as a context manager (the bag appears when the block completes)."""

    def __init__(self, path: str | Path, fps: float, topics: CameraTopics = CameraTopics(), frame_id: str = "camera",
                 storage: str = "mcap", compressed: bool = False, jpeg_quality: int = 90,
                 class_names: Sequence[str] = (), focal_px: float | None = None, overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise BagError(f"storage must be one of {STORAGES}, got {storage!r}")
        if fps <= 0:
            raise BagError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise BagError(f"{self.path} exists; remove it or choose another output")
        self.fps, self.topics, self.frame_id, self.storage = fps, topics, frame_id, storage
        self.compressed, self.jpeg_quality = compressed, jpeg_quality
        self.class_names, self.focal_px, self.overwrite = list(class_names), focal_px, overwrite
        self.typestore = bag_typestore()
        self.frames = 0
        self._writer: Any = None
        self._staging: Path | None = None
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> "CameraBagWriter":
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._staging / "bag", version=9, storage_plugin=plugin)
        self._writer.open()
        image_type = COMPRESSED_TYPE if self.compressed else IMAGE_TYPE
        for key, topic, msgtype in (("image", self.topics.image, image_type),
                                    ("info", self.topics.camera_info, CAMERA_INFO_TYPE)):
            self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._staging is not None
        failure = exc
        try:
            self._writer.close()
            if exc is None:
                if self.overwrite and self.path.exists():
                    shutil.rmtree(self.path)
                (self._staging / "bag").rename(self.path)
        except Exception as error:
            failure = failure or error
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)
        if failure is not None:
            clear = output_write_error(self.path, failure)
            if clear is not None:  # e.g. the disk filled up: say so, with nothing half-written left
                raise clear from failure
            if failure is not exc:
                raise failure

    @property
    def has_ground_truth(self) -> bool:
        return "truth" in self._connections

    def _header(self, stamp_ns: int) -> Any:
        return self.typestore.types["std_msgs/msg/Header"](stamp=_stamp(self.typestore, stamp_ns), frame_id=self.frame_id)

    def write(self, image_bgr: np.ndarray, stamp_ns: int, boxes_xyxy: np.ndarray | None = None,
              class_ids: np.ndarray | None = None) -> None:
        """One frame (BGR uint8) at ``stamp_ns``; with boxes, also its ground truth."""
        types = self.typestore.types
        header = self._header(stamp_ns)
        height, width = image_bgr.shape[:2]
        if self.compressed:
            ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise BagError("JPEG encoding failed")
            msg = types[COMPRESSED_TYPE](header=header, format="jpeg", data=encoded.reshape(-1))
        else:
            data = np.ascontiguousarray(image_bgr, dtype=np.uint8).reshape(-1)
            msg = types[IMAGE_TYPE](header=header, height=height, width=width, encoding="bgr8", is_bigendian=0,
                                    step=width * 3, data=data)
        self._put("image", msg, stamp_ns)
        self._put("info", self._camera_info(header, width, height), stamp_ns)
        if boxes_xyxy is not None:
            self.write_detections(self.topics.ground_truth, stamp_ns, boxes_xyxy, class_ids, key="truth")
        self.frames += 1

    def write_detections(self, topic: str, stamp_ns: int, boxes_xyxy: np.ndarray, class_ids: np.ndarray | None,
                         scores: np.ndarray | None = None, key: str | None = None) -> None:
        """A Detection2DArray on ``topic`` (e.g. a model's output next to the images)."""
        key = key or f"detections:{topic}"
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(topic, DETECTIONS_TYPE, typestore=self.typestore)
        self._put(key, self._detections(self._header(stamp_ns), boxes_xyxy, class_ids, scores), stamp_ns)

    def _put(self, key: str, msg: Any, stamp_ns: int) -> None:
        connection = self._connections[key]
        self._writer.write(connection, stamp_ns, self.typestore.serialize_cdr(msg, connection.msgtype))

    def _camera_info(self, header: Any, width: int, height: int) -> Any:
        types = self.typestore.types
        if self.focal_px:  # a known pinhole camera (the simulator's)
            k, p = (np.array(m, np.float64) for m in pinhole_intrinsics(self.focal_px, width, height))
        else:  # ROS convention for an uncalibrated camera: K all zero
            k, p = np.zeros(9), np.zeros(12)
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return types[CAMERA_INFO_TYPE](header=header, height=height, width=width, distortion_model="plumb_bob",
                                       d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
                                       roi=roi)

    def _detections(self, header: Any, boxes_xyxy: np.ndarray, class_ids: np.ndarray | None,
                    scores: np.ndarray | None = None) -> Any:
        types = self.typestore.types
        Point, Quaternion = types["geometry_msgs/msg/Point"], types["geometry_msgs/msg/Quaternion"]
        pose = types["geometry_msgs/msg/PoseWithCovariance"](
            pose=types["geometry_msgs/msg/Pose"](position=Point(x=0.0, y=0.0, z=0.0),
                                                  orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
            covariance=np.zeros(36))
        detections = []
        ids = np.zeros(len(boxes_xyxy), np.int64) if class_ids is None else np.asarray(class_ids)
        confidences = np.ones(len(boxes_xyxy)) if scores is None else np.asarray(scores, np.float64)
        for (x0, y0, x1, y1), class_id, score in zip(np.asarray(boxes_xyxy, np.float64), ids, confidences):
            name = self.class_names[int(class_id)] if int(class_id) < len(self.class_names) else str(int(class_id))
            hypothesis = types["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=types["vision_msgs/msg/ObjectHypothesis"](class_id=name, score=float(score)), pose=pose)
            centre = types["vision_msgs/msg/Pose2D"](position=types["vision_msgs/msg/Point2D"](x=(x0 + x1) / 2, y=(y0 + y1) / 2),
                                                     theta=0.0)
            bbox = types["vision_msgs/msg/BoundingBox2D"](center=centre, size_x=x1 - x0, size_y=y1 - y0)
            detections.append(types["vision_msgs/msg/Detection2D"](header=header, results=[hypothesis], bbox=bbox, id=""))
        return types[DETECTIONS_TYPE](header=header, detections=detections)


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class BagFrame:
    index: int
    stamp_ns: int
    """The image header stamp (what the node measures end-to-end latency from)."""
    receive_ns: int
    """The bag's record time."""
    image: np.ndarray


@dataclass(frozen=True)
class BagTruth:
    boxes_xyxy: np.ndarray
    class_ids: np.ndarray


def open_bag(path: str | Path) -> Any:
    """An opened rosbags AnyReader, or a :class:`BagError` that says what is wrong."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    try:
        reader = AnyReader([path], default_typestore=bag_typestore())
        reader.open()
    except Exception as exc:  # rosbags raises several reader errors for broken or truncated bags
        raise BagError(f"cannot read bag {path}: {exc}") from exc
    return reader


def _connection(reader: Any, path: Path, topic: str | None, msgtypes: Sequence[str], what: str) -> Any:
    candidates = {c.topic: c for c in reader.connections if c.msgtype in msgtypes}
    every = {c.topic: c.msgtype for c in reader.connections}
    if topic is None:
        if len(candidates) != 1:
            raise BagError(f"{path} has {len(candidates)} {what} topics {sorted(candidates)}; choose one "
                           f"(all topics: {every})")
        return next(iter(candidates.values()))
    if topic not in candidates:
        problem = f"is a {every[topic]}, not a {what} topic" if topic in every else "does not exist"
        raise BagError(f"topic {topic!r} of {path} {problem}; {what} topics: {sorted(candidates)}")
    return candidates[topic]


def image_connection_of(path: str | Path, topic: str | None = None) -> tuple[str, str]:
    """(topic, message type) of the bag's image topic (``topic``, or its only one)."""
    reader = open_bag(path)
    try:
        connection = _connection(reader, Path(path), topic, (IMAGE_TYPE, COMPRESSED_TYPE), "image")
        return connection.topic, connection.msgtype
    finally:
        reader.close()


def image_topic_of(path: str | Path, topic: str | None = None) -> str:
    return image_connection_of(path, topic)[0]


def _decoded(reader: Any, connection: Any, path: Path) -> Iterator[tuple[int, Any]]:
    """(record time, message) of one connection; a bag that breaks mid-way raises :class:`BagError`
    (errors raised by the caller while handling a message are not rewrapped)."""
    count = 0
    try:
        for _, receive_ns, rawdata in reader.messages(connections=[connection]):
            message = reader.deserialize(rawdata, connection.msgtype)
            count += 1
            yield receive_ns, message
    except Exception as exc:  # rosbags raises several error types for damaged files
        raise BagError(f"{path} is damaged after {count} messages of {connection.topic}: {exc}") from exc


def iter_camera_frames(path: str | Path, topic: str | None = None) -> Iterator[BagFrame]:
    """BGR frames of one image topic (by default the bag's only one), in record order. Frames that
    do not decode are skipped, as the node would; a bag that breaks mid-way raises :class:`BagError`."""
    path = Path(path)
    reader = open_bag(path)
    try:
        connection = _connection(reader, path, topic, (IMAGE_TYPE, COMPRESSED_TYPE), "image")
        index = 0
        for receive_ns, msg in _decoded(reader, connection, path):
            try:
                image, pixel_format = (compressed_image_to_array(msg) if connection.msgtype == COMPRESSED_TYPE
                                       else raw_image_to_array(msg))
            except ImageFormatError:
                continue
            yield BagFrame(index, stamp_to_ns(msg.header.stamp), receive_ns, to_bgr(image, pixel_format))
            index += 1
    finally:
        reader.close()


def class_id_of(label: str, lookup: dict[str, int]) -> int:
    """A Detection2D ``class_id`` (a class name, or a class index as text) -> class index; -1 if unknown."""
    return lookup.get(label, int(label) if label.isdigit() else -1)


def read_ground_truth(path: str | Path, class_names: Sequence[str], topic: str | None = None) -> dict[int, BagTruth]:
    """Detection2DArray ground truth keyed by header stamp (ns). Class ids in the messages may be
    class names or integer strings."""
    path = Path(path)
    reader = open_bag(path)
    lookup = {name: index for index, name in enumerate(class_names)}
    truth: dict[int, BagTruth] = {}
    try:
        connection = _connection(reader, path, topic, (DETECTIONS_TYPE,), "Detection2DArray")
        for _, msg in _decoded(reader, connection, path):
            boxes, ids = [], []
            for detection in msg.detections:
                label = detection.results[0].hypothesis.class_id if detection.results else ""
                class_id = class_id_of(label, lookup)
                if class_id < 0:
                    raise BagError(f"ground truth class {label!r} in {path} is not one of the model's classes")
                cx, cy = detection.bbox.center.position.x, detection.bbox.center.position.y
                w, h = detection.bbox.size_x, detection.bbox.size_y
                boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
                ids.append(class_id)
            truth[stamp_to_ns(msg.header.stamp)] = BagTruth(np.array(boxes, np.float64).reshape(-1, 4), np.array(ids, np.int64))
    finally:
        reader.close()
    return truth
