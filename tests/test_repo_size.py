"""The device tool copies the working tree plus the carried paths only up to 64 MiB: the tracked files must leave
room for the carry every GPU script needs (the wheels and the packed ComfyUI, benchmarks/device_setup.sh), or no GPU
measurement can run from a checkout of main."""
import subprocess
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]
DEVICE_COPY_LIMIT = 64 * 2**20
CARRY = 6 * 2**20  # .devcarry/whl (3.2 MB) + .devcarry/ComfyUI.tar.gz (2.5 MB), 2026-12-07


def tracked_bytes() -> int:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=PACK, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return sum((PACK / name).stat().st_size for name in out.decode().split("\0") if name and (PACK / name).is_file())


def test_tracked_files_leave_room_for_the_device_carry():
    size = tracked_bytes()
    print(f"\ntracked: {size / 2**20:.1f} MiB; room left for the carry: {(DEVICE_COPY_LIMIT - size) / 2**20:.1f} MiB")
    assert size + CARRY <= DEVICE_COPY_LIMIT, (
        f"the tracked files ({size / 2**20:.1f} MiB) plus the device carry ({CARRY / 2**20:.0f} MiB) exceed the device "
        f"tool's 64 MiB: shrink or drop large files (docs/runs logs, demo weights) before adding more")
