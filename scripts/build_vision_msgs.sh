#!/usr/bin/env bash
# Build the bundled vision_msgs interface package (interfaces/vision_msgs) into a venv, from the
# ROS 2 PyPI wheels. Skipped where a vision_msgs from a ROS distribution is importable.
# Usage: scripts/build_vision_msgs.sh <venv>
set -euo pipefail
venv=$(cd "$1" && pwd)
python="$venv/bin/python"
root=$(cd "$(dirname "$0")/.." && pwd)

origin=$("$python" -c "import vision_msgs.msg, os; print(os.path.dirname(vision_msgs.__file__))" 2>/dev/null || true)
if [ -n "$origin" ] && [[ "$origin" != "$venv"* ]]; then
  echo "vision_msgs comes from $origin (a ROS distribution): not building the bundled copy"
  exit 0
fi

echo "building the bundled vision_msgs (4.x message layout) into $venv"
"$python" -m pip install -q -c "$root/requirements/constraints.txt" -r "$root/requirements/ros-build.txt"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
if ! { cmake -S "$root/interfaces/vision_msgs" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
         -DPython3_EXECUTABLE="$python" -DBUILD_TESTING=OFF \
       && cmake --build "$build" -j "$(nproc)" \
       && cmake --install "$build"; } > "$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log"
  echo "building vision_msgs failed (full log above)" >&2
  exit 1
fi
"$python" -c "from vision_msgs.msg import Detection2DArray" && echo "vision_msgs built"
