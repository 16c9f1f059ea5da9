"""The artifact format shared by every runtime: a directory of model files plus `manifest.json`.

Writers stage everything in a hidden temporary sibling directory and rename it into place, so an
interrupted export never leaves a half artifact. The manifest lists the sha256 of every file; loaders
refuse an artifact whose files changed. Split and stitch artifacts use the same writer: their parts are
sub-directories, hashed like any other file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from runtimes.errors import RuntimeArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


@lru_cache(maxsize=1)
def manifest_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_manifest(manifest: dict, where: str = "manifest") -> None:
    """Raise RuntimeArtifactError naming the first field that breaks the JSON schema."""
    import jsonschema
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = "/".join(map(str, e.absolute_path)) or "(root)"
        raise RuntimeArtifactError(f"{where}: field {field}: {e.message}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _file_entries(root: Path) -> list[dict]:
    """sha256 + size of every file under root (sorted, manifest excluded), paths in POSIX form."""
    entries = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST:
            entries.append({"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p),
                            "bytes": p.stat().st_size})
    return entries


def check_destination(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, to write over an existing non-empty path unless asked to."""
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise RuntimeArtifactError(f"{out} already exists; choose a new --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise RuntimeArtifactError(f"{out} is a file, not an artifact directory; choose another --out")
    return out


class ArtifactWriter:
    """Stage files in `writer.dir`, then `commit(manifest)` hashes them and renames the directory in.

    Use as a context manager: leaving the block without a commit (an exception, Ctrl-C) deletes the
    staging directory and leaves `out` untouched.
    """

    def __init__(self, out: str | Path, overwrite: bool = False):
        self.out = check_destination(out, overwrite).absolute()
        self.overwrite = overwrite
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        self.committed = False

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, manifest: dict) -> dict:
        """Complete `manifest` with the file list, validate it, write it and move the artifact into place."""
        manifest = {"format_version": FORMAT_VERSION, **manifest, "files": _file_entries(self.dir)}
        manifest = json.loads(json.dumps(manifest, allow_nan=False))  # tuples → lists; NaN/inf refused
        if not manifest["files"]:
            raise RuntimeArtifactError("nothing was written into the artifact")
        if not (self.dir / manifest.get("entry", "")).exists():
            raise RuntimeArtifactError(f"manifest entry {manifest.get('entry')!r} is not among the written files")
        validate_manifest(manifest, "new manifest")
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        _fsync_tree(self.dir)
        backup = None
        if self.out.exists():
            if not self.overwrite and any(self.out.iterdir()):
                raise RuntimeArtifactError(f"{self.out} appeared while exporting; nothing was overwritten")
            backup = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, backup)
        os.replace(self.dir, self.out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        self.committed = True
        return manifest


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its root directory and parsed manifest."""
    root: Path
    manifest: dict

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def entry(self) -> Path:
        return self.root / self.manifest["entry"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def size_bytes(self) -> int:
        """Bytes of all model files (manifest excluded): what a device has to store."""
        return sum(f["bytes"] for f in self.manifest["files"])

    def precision(self) -> str:
        q = self.manifest.get("quant")
        return q["precision"] if q else "fp32"


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read and schema-check manifest.json; with `verify`, re-hash every listed file."""
    root = Path(path)
    if not root.is_dir():
        raise RuntimeArtifactError(f"{root} is not an artifact directory; create one with `edgevit export`")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise RuntimeArtifactError(f"{root} has no {MANIFEST}; it is not an edgevit artifact (re-export it)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RuntimeArtifactError(f"{mpath} is not valid JSON ({e}); re-export the artifact") from e
    validate_manifest(manifest, str(mpath))
    if verify:
        for f in manifest["files"]:
            p = root / f["path"]
            if not p.is_file():
                raise RuntimeArtifactError(f"{root}: file {f['path']} listed in the manifest is missing; re-export")
            if p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
                raise RuntimeArtifactError(f"{root}: {f['path']} does not match its sha256 in the manifest "
                                           "(corrupt or modified); re-export the artifact")
    return Artifact(root, manifest)


def tool_versions(*modules: str) -> dict[str, str]:
    """Versions of the named installed distributions (those missing are skipped)."""
    from importlib import metadata
    out = {}
    for m in modules:
        try:
            out[m] = metadata.version(m)
        except metadata.PackageNotFoundError:
            pass
    return out
