"""Does this ROS 2 install's DDS have DDS-Security (SROS2)? Creates a node in a placeholder enclave
under ``ROS_SECURITY_STRATEGY=Enforce`` in a child process and prints what the middleware says.

    .venv/bin/python scripts/security_probe.py

With security plugins present the placeholder files are refused as bad certificates; without them
Fast DDS says it was built without its security libraries (what the PyPI Kilted wheels say).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import rclpy
rclpy.init(args=["--ros-args", "--enclave", "/probe"])
try:
    rclpy.create_node("security_probe")
    print("created: a node came up under Enforce with placeholder certificates (security NOT enforced)")
except Exception as exc:
    print(f"refused: {exc}")
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as keystore:
        enclave = Path(keystore) / "enclaves" / "probe"
        enclave.mkdir(parents=True)
        for name in ("identity_ca.cert.pem", "permissions_ca.cert.pem", "cert.pem", "key.pem", "governance.p7s",
                     "permissions.p7s"):
            (enclave / name).write_text("placeholder\n")
        env = dict(os.environ, ROS_SECURITY_ENABLE="true", ROS_SECURITY_STRATEGY="Enforce",
                   ROS_SECURITY_KEYSTORE=keystore)
        result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    print((result.stdout + result.stderr).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
