"""Get a MovieLens release onto disk: download from an ordered list of sources, verify its MD5, extract safely, locate its files."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import requests

from recsys.core.io import atomic_path
from recsys.data.movielens import DATASETS, DataError, DatasetSpec

log = logging.getLogger(__name__)

_MARKER = ".verified-md5"  # written inside an extracted folder once it is complete and verified


class DownloadError(RuntimeError):
    """Every download source failed; the message lists each source with its error."""


def md5_of(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, the checksum GroupLens publishes for its zips.

    Args:
        path: the file to hash.

    Returns:
        The 32-character lowercase hex digest.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> None:
    """Extract a zip, refusing it whole if any entry could land outside `target_dir`.

    A downloaded archive is untrusted input: an entry named `../x`, `/etc/x` or `C:\\x`, or a
    symlink entry, could write anywhere. Every entry is checked before anything is written.

    Args:
        zip_path: the archive.
        target_dir: the folder to extract into (created if needed).

    Raises:
        DataError: the archive is unreadable or has an unsafe entry (nothing is written then).
    """
    target = Path(target_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                name = info.filename
                # PureWindowsPath splits on both / and \ and sees drive letters.
                win = PureWindowsPath(name)
                unsafe = (
                    PurePosixPath(name).is_absolute()
                    or win.is_absolute()
                    or bool(win.drive)
                    or ".." in win.parts
                    or not (target / name).resolve().is_relative_to(target)
                )
                if unsafe or stat.S_ISLNK(info.external_attr >> 16):
                    kind = "a symlink" if not unsafe else f"a path outside {target}"
                    raise DataError(
                        f"{zip_path}: refusing to extract entry {name!r}: it is {kind}. This is not "
                        f"a genuine MovieLens archive; delete it and download again."
                    )
            target.mkdir(parents=True, exist_ok=True)
            archive.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zip_path}: not a readable zip ({exc}); delete it and download again.") from exc


class _ChecksumMismatch(Exception):
    pass


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown MovieLens release {name!r}: expected one of {', '.join(DATASETS)}") from None


def _is_verified(folder: Path, spec: DatasetSpec) -> bool:
    marker = folder / _MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == spec.md5
        and all((folder / f).is_file() for f in spec.files.values())
    )


def _download(session: Any, url: str, dest: Path, timeout_s: float) -> None:
    # verify=True spelled out: TLS verification is never to be turned off here, whatever the
    # session's defaults, because the MD5 alone does not tell us who served the bytes.
    response = session.get(url, stream=True, timeout=timeout_s, verify=True)
    try:
        response.raise_for_status()
        with open(dest, "wb") as f:
            for chunk in response.iter_content(chunk_size=1 << 20):
                f.write(chunk)
    finally:
        response.close()


def _download_verified(spec: DatasetSpec, sources: list[str], zip_path: Path, timeout_s: float, session: Any) -> None:
    errors: list[tuple[str, str]] = []
    owned = requests.Session() if session is None else contextlib.nullcontext(session)
    with owned as http:
        for source in sources:
            url = source.replace("{name}", spec.name)
            try:
                # atomic_path deletes the partial or mismatching download on any exception.
                with atomic_path(zip_path) as tmp:
                    _download(http, url, tmp, timeout_s)
                    got = md5_of(tmp)
                    if got != spec.md5:
                        raise _ChecksumMismatch(f"MD5 {got} does not match GroupLens's {spec.md5}; download removed")
            except (requests.RequestException, OSError, _ChecksumMismatch) as exc:
                message = f"{type(exc).__name__}: {exc}"
                log.warning("Download of %s from %s failed: %s", spec.name, url, message)
                errors.append((url, message))
                continue
            log.info("Downloaded %s from %s (MD5 verified)", spec.name, url)
            return
    listing = "\n".join(f"  - {url}: {message}" for url, message in errors) or "  (no sources given)"
    raise DownloadError(
        f"Could not download {spec.name} from any source:\n{listing}\n"
        f"To run without network: pass a folder holding the extracted files, e.g. "
        f"`-p data_dir=path/to/{spec.folder}` (the folder with {spec.files['ratings']}), or put the "
        f"official {spec.name}.zip (MD5 {spec.md5}) at {zip_path}, or use `-p dataset=synthetic`."
    )


def fetch_dataset(name: str, sources: list[str], cache_dir: Path, timeout_s: float = 60, session: Any = None) -> Path:
    """Make sure a verified, extracted copy of a MovieLens release is in `cache_dir`.

    Why: runs must read byte-identical data wherever they run, and a second run must not touch
    the network. Sources are tried in order; a zip counts only if its MD5 is GroupLens's.

    Args:
        name: "ml-1m" or "ml-100k".
        sources: URL templates; "{name}" is replaced by `name`.
        cache_dir: where the zip and the extracted folder are kept.
        timeout_s: network timeout per request (seconds).
        session: a requests.Session-like object (tests inject a fake); None opens a real one.

    Returns:
        The folder holding the extracted files, `cache_dir/<folder>`.

    Raises:
        DownloadError: no source gave a verified zip (the message lists each source's error).
        DataError: the verified zip does not hold the expected files.
    """
    spec = _spec(name)
    cache_dir = Path(cache_dir)
    folder = cache_dir / spec.folder
    if _is_verified(folder, spec):
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    zip_path = cache_dir / f"{spec.name}.zip"
    if not (zip_path.is_file() and md5_of(zip_path) == spec.md5):
        _download_verified(spec, list(sources), zip_path, timeout_s, session)
    # Extract beside the final folder, then rename: a reader never sees a half-extracted folder.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=cache_dir))
    try:
        safe_extract(zip_path, tmp_dir)
        extracted = locate_files(name, tmp_dir)["ratings"].parent
        with atomic_path(extracted / _MARKER) as tmp:
            tmp.write_text(spec.md5 + "\n")
        if folder.exists():
            log.warning("Replacing unverified folder %s with the verified extraction", folder)
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return folder


def locate_files(name: str, data_dir: Path) -> dict[str, Path]:
    """Find a release's three files in `data_dir` or in `data_dir/<folder>`.

    Why: users point data_dir either at the extracted folder itself or at its parent (e.g.
    `data/` holding `ml-1m/`); both should work, and a wrong path should say what is missing.

    Args:
        name: "ml-1m" or "ml-100k" (the synthetic data uses the ml-1m files).
        data_dir: the folder to look in.

    Returns:
        {"ratings": path, "users": path, "movies": path}.

    Raises:
        DataError: the folder or a file is missing (the message says where it looked).
    """
    spec = _spec(name)
    data_dir = Path(data_dir)
    wanted = ", ".join(spec.files.values())
    fix = (
        f"Point data_dir at the folder holding the extracted {name} files ({wanted}), "
        f"e.g. `-p data_dir=path/to/{spec.folder}`, or leave data_dir empty to download."
    )
    if not data_dir.is_dir():
        raise DataError(
            f"data_dir {data_dir} (resolved: {data_dir.resolve()}) does not exist or is not a folder. {fix}"
        )
    candidates = [data_dir, data_dir / spec.folder]
    for folder in candidates:
        paths = {kind: folder / file for kind, file in spec.files.items()}
        if all(p.is_file() for p in paths.values()):
            return paths
    looked = [
        f"{folder.resolve()} (missing: {', '.join(f for f in spec.files.values() if not (folder / f).is_file())})"
        for folder in candidates
        if folder.is_dir()
    ]
    raise DataError(f"{name} files not found; looked in {' and in '.join(looked)}. {fix}")
