"""The Dockerfiles, linted (no Docker engine runs on these machines, so neither image is built here)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_both_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: ./run test installs it (requirements-dev.txt)"
    proc = subprocess.run([hadolint, "Dockerfile", "Dockerfile.serve"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
