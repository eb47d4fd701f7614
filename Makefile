# Set-up is part of every target: a venv with pinned versions, the ROS 2 wheels, and the bundled
# vision_msgs where none is importable. Stamp files make a second run start within seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
SHARED_DATA ?= ../shared/data
PIP := $(PY) -m pip install -q -c requirements/constraints.txt

.PHONY: setup demo demo-real live-demo test bench bench-compress clean

setup: $(STAMPS)/package

$(STAMPS)/venv:
	$(PYTHON) -m venv $(VENV)
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/deps: $(STAMPS)/venv requirements/constraints.txt requirements/base.txt requirements/ros.txt requirements/dev.txt requirements/stubs.txt requirements/modelopt.txt requirements/nodeps.txt
	$(PIP) -r requirements/base.txt -r requirements/dev.txt -r requirements/modelopt.txt
	$(PY) -c "import rclpy" 2>/dev/null || $(PIP) -r requirements/ros.txt
	$(PIP) --no-deps -r requirements/stubs.txt -r requirements/nodeps.txt
	touch $@

$(STAMPS)/vision_msgs: $(STAMPS)/deps scripts/build_vision_msgs.sh interfaces/vision_msgs/CMakeLists.txt interfaces/vision_msgs/package.xml $(wildcard interfaces/vision_msgs/msg/*.msg)
	bash scripts/build_vision_msgs.sh $(VENV)
	touch $@

$(STAMPS)/package: $(STAMPS)/vision_msgs setup.py setup.cfg
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . > $(VENV)/pip-editable.log 2>&1 || { cat $(VENV)/pip-editable.log; false; }
	touch $@

# Main job: synthetic drive -> sample teacher -> compress -> live replay through detector_node ->
# side-by-side report. Needs neither ../shared nor a GPU.
demo: setup
	$(PY) -m prune_perception.cli.main demo --output runs/demo

# The same flow on the real YOLOX-Nano, coco128 and the dashcam clip from $(SHARED_DATA).
demo-real: setup
	$(PY) -m prune_perception.cli.main demo --real-data $(SHARED_DATA) --output runs/demo_real

# detector_node live over the shared dashcam clip with the shared YOLOX-Nano (latency only).
live-demo: setup
	$(PY) -m prune_perception.cli.main live-demo \
	  --model $(SHARED_DATA)/models/yolox_nano.onnx --video $(SHARED_DATA)/video/solidWhiteRight.mp4 \
	  --output runs/live_demo

# The whole test suite (unit, real ONNX Runtime, real DDS between processes, type check).
test: setup
	$(PY) -m pytest

# Latency benchmark of the live node (prints numbers; not a test).
bench: setup
	$(PY) benchmarks/detector_node_latency.py --video $(SHARED_DATA)/video/solidWhiteRight.mp4 \
	  --model $(SHARED_DATA)/models/yolox_nano.onnx

# The compression benchmark: the driving recipe on ../shared/data, pruning quality and the deployment
# ladder (prints numbers; not a test). Hours on 2 CPU cores; resumable.
bench-compress: setup
	$(PY) benchmarks/compression_benchmark.py

clean:
	rm -rf $(VENV) runs build install log
