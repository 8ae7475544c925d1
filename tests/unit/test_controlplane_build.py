"""The control-plane build script says exactly what is missing when Go or the proxy is."""

import os
import shutil
import subprocess
from pathlib import Path

BUILD = Path(__file__).resolve().parents[2] / "tools" / "controlplane" / "build.sh"


def test_missing_go_is_named(tmp_path: Path) -> None:
    # A PATH with only what the script needs before it looks for go.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "JAAS_CACHE": str(tmp_path / "c")}
    result = subprocess.run([str(BUILD)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 3
    assert "the Go toolchain is not installed" in result.stderr


def test_unreachable_module_proxy_is_named(tmp_path: Path) -> None:
    env = dict(os.environ, JAAS_CACHE=str(tmp_path / "c"), GOPROXY="off")
    result = subprocess.run([str(BUILD)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 4
    assert "Go module proxy (off)" in result.stderr
