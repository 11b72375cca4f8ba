"""Real datasets: Flickr8k, Flickr30k and COCO with Karpathy's splits, fetched, verified and laid out.

Explained in ``notebooks/09_scaling_up.ipynb`` and in ``data/README.md``.

Every dataset ends up in the one layout that :func:`siamese_utils.core.data.read_dataset`
reads (``ROOT/NAME/dataset.json`` and ``ROOT/NAME/images/<filepath>/<filename>``).
Archives are kept in ``ROOT/downloads/``: a file already there and verified is never
fetched again, a partial ``FILE.part`` is resumed with an HTTP ``Range`` request,
and every file is checked against the size and checksum published for it before
anything is extracted. Extraction refuses any archive member that would land
outside its folder, builds the dataset in a temporary folder beside its
destination and moves it into place only once it reads with the expected split
sizes, so a failure never leaves half a dataset and never touches what was there.

Flickr8k and Flickr30k images are given out by their authors after a request
form: :func:`download` then prints where to ask, which file to put where, and
the command that checks it, without touching the network.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from ..core.runtime import atomic_write_text
from ..core.data import CaptionedImages, DatasetError, read_dataset
from .tiny import TinyConfig

__all__ = [
    "RemoteFile",
    "DatasetInfo",
    "DATASETS",
    "DownloadError",
    "ManualDownloadRequired",
    "UnsafeArchiveError",
    "dataset_info",
    "registry_table",
    "manual_steps",
    "download",
    "download_file",
    "verify_file",
    "extract_archive",
    "load_dataset",
    "check_counts",
    "is_complete",
    "human_bytes",
]

DOWNLOADS = "downloads"  # ROOT/downloads/ holds the archives, shared by the datasets that use them
CHUNK = 1 << 20
USER_AGENT = "siamese-utils (+https://pypi.org/project/siamese-image-text/)"


class DownloadError(DatasetError):
    """A download failed or a file is not the one published (size or checksum). Names the file and what to do.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """


class ManualDownloadRequired(DatasetError):
    """A dataset's files are handed out after a request form; the message holds the steps to get them.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """


class UnsafeArchiveError(DatasetError):
    """An archive member would be written outside its folder (``../``, an absolute path, a link out).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it is, its size and checksum, and what to take out of it.

    ``checksum`` is ``"ALGORITHM:HEX"`` (any :mod:`hashlib` algorithm) or ``None``
    where nobody publishes one (then only the size is checked); ``size`` is in
    bytes, or ``None`` where no exact size is published (then only the checksum
    is checked). ``source`` says where both values were published. ``extract``
    maps paths inside the archive to paths inside the dataset folder: a path
    ending in ``/`` is a folder, taken whole; otherwise one file, found at that
    path or in any folder of the archive. ``manual`` files cannot be fetched
    automatically (a request form); ``how_to_get`` then says how.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    filename: str
    url: str
    size: int | None
    checksum: str | None
    source: str
    extract: tuple[tuple[str, str], ...] = ()
    manual: bool = False
    approx_size: str = ""  # for people, where no exact size is published
    how_to_get: str = ""

    def __post_init__(self) -> None:
        if self.size is None and self.checksum is None:
            raise ValueError(f"{self.filename}: give a size or a checksum, or it cannot be verified")
        if self.checksum is not None:
            algorithm, _, digest = self.checksum.partition(":")
            if algorithm not in hashlib.algorithms_available or not re.fullmatch(r"[0-9a-f]+", digest):
                raise ValueError(f"{self.filename}: checksum {self.checksum!r} is not 'ALGORITHM:HEX'")

    @property
    def human_size(self) -> str:
        """The size for people: exact when published, else the approximate one."""
        return human_bytes(self.size) if self.size is not None else self.approx_size


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of the registry: its files, the images per split of Karpathy's split, and how to get it.

    ``splits`` counts images with ``train`` including COCO's ``restval``, as
    :meth:`siamese_utils.core.data.CaptionedImages.split` does; :func:`download`
    checks the extracted dataset against these numbers.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    name: str
    title: str
    homepage: str
    splits: Mapping[str, int]
    files: tuple[RemoteFile, ...] = ()
    licence: str = ""
    shipped: bool = False  # in the repository (the tiny set): nothing to download

    @property
    def openly_downloadable(self) -> bool:
        return not any(f.manual for f in self.files)

    @property
    def num_images(self) -> int:
        return sum(self.splits.values())


_KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


def _karpathy_split(name: str) -> RemoteFile:
    # Size and SHA-256 published by TensorFlow Datasets, tensorflow_datasets/url_checksums/coco_captions.txt
    # (commit 2a3f49a71e89969198280c6810e6ee8282d37b45). mlverse/torchvision R/dataset-flickr.R publishes the
    # MD5 of the same file, 4fa8c08369d22fe16e41dc124bd1adc2.
    return RemoteFile(
        filename="caption_datasets.zip",
        url=_KARPATHY_URL,
        size=36745453,
        checksum="sha256:4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
        source="TensorFlow Datasets, url_checksums/coco_captions.txt",
        extract=((f"dataset_{name}.json", "dataset.json"),),
    )


_FLICKR8K_FORM = "https://forms.illinois.edu/sec/1713398"
_FLICKR30K_FORM = "https://forms.illinois.edu/sec/229675"

DATASETS: dict[str, DatasetInfo] = {
    "tiny": DatasetInfo(
        name="tiny",
        title="Tiny synthetic shapes (shipped in data/tiny)",
        homepage="data/tiny/README.md",
        splits={"train": TinyConfig.num_train, "val": TinyConfig.num_val, "test": TinyConfig.num_test},
        shipped=True,
        licence="CC0, generated by siamese_utils.datasets.tiny",
    ),
    "flickr8k": DatasetInfo(
        name="flickr8k",
        title="Flickr8k (Hodosh et al. 2013), Karpathy's split",
        homepage="https://hockenmaier.cs.illinois.edu/8k-pictures.html",
        splits={"train": 6000, "val": 1000, "test": 1000},
        licence="research use; the images are handed out after a request form",
        files=(
            _karpathy_split("flickr8k"),
            # MD5 published by mlverse/torchvision, R/dataset-flickr.R
            # (commit ce3b0a1ec2fa1af53a14916f88dd353379ec43df), for the archive the form hands out (checked there
            # against the copy at github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip).
            # No exact size is published; "about 1 GB" is that file's documentation there.
            RemoteFile(
                filename="Flickr8k_Dataset.zip",
                url=_FLICKR8K_FORM,
                size=None,
                checksum="md5:f18a1e2920de5bd84dae7cf08ec78978",
                source="mlverse/torchvision, R/dataset-flickr.R",
                extract=(("Flicker8k_Dataset/", "images/"),),  # sic: the archive's folder is spelt "Flicker"
                manual=True,
                approx_size="about 1 GB",
                how_to_get=f"request it with the form at {_FLICKR8K_FORM}; the e-mailed link gives "
                "Flickr8k_Dataset.zip",
            ),
        ),
    ),
    "flickr30k": DatasetInfo(
        name="flickr30k",
        title="Flickr30k (Young et al. 2014), Karpathy's split",
        homepage="https://shannon.cs.illinois.edu/DenotationGraph/",
        splits={"train": 29000, "val": 1014, "test": 1000},
        licence="research use; the images are handed out after a request form",
        files=(
            _karpathy_split("flickr30k"),
            # MD5 published by mlverse/torchvision, R/dataset-flickr.R
            # (commit ce3b0a1ec2fa1af53a14916f88dd353379ec43df), for the archive the form's e-mail links to
            # (uofi.app.box.com/shared/static/1cpolrtkckn4hxr1zhmfg0ln9veo6jpl.gz). No exact size is published;
            # "about 4.1 GB" is that file's documentation there.
            RemoteFile(
                filename="flickr30k-images.tar.gz",
                url=_FLICKR30K_FORM,
                size=None,
                checksum="md5:985ac761bbb52ca49e0c474ae806c07c",
                source="mlverse/torchvision, R/dataset-flickr.R",
                extract=(("flickr30k-images/", "images/"),),
                manual=True,
                approx_size="about 4.1 GB",
                how_to_get=f"request it with the form at {_FLICKR30K_FORM}; the e-mailed link gives "
                "flickr30k-images.tar.gz",
            ),
        ),
    ),
    "coco": DatasetInfo(
        name="coco",
        title="MS-COCO 2014 (Lin et al. 2014), Karpathy's split",
        homepage="https://cocodataset.org/#download",
        # 82,783 train2014 images + 30,504 restval (from val2014) = 113,287 for training.
        splits={"train": 113287, "val": 5000, "test": 5000},
        licence="annotations CC BY 4.0; images under their Flickr licences",
        files=(
            _karpathy_split("coco"),
            # Sizes and SHA-256 published by TensorFlow Datasets, tensorflow_datasets/url_checksums/coco2014.txt
            # (commit 24211da0508a86f0a9efd82c69bab9d25cda0a20; the same values in coco.txt and coco_captions.txt).
            RemoteFile(
                filename="train2014.zip",
                url="http://images.cocodataset.org/zips/train2014.zip",
                size=13510573713,
                checksum="sha256:ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
                source="TensorFlow Datasets, url_checksums/coco2014.txt",
                extract=(("train2014/", "images/train2014/"),),
            ),
            RemoteFile(
                filename="val2014.zip",
                url="http://images.cocodataset.org/zips/val2014.zip",
                size=6645013297,
                checksum="sha256:fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
                source="TensorFlow Datasets, url_checksums/coco2014.txt",
                extract=(("val2014/", "images/val2014/"),),
            ),
        ),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; an unknown name lists the known ones.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def registry_table():
    """The registry as a table: images per split, download size, open or by request, how files are verified, hub route.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    import pandas as pd

    from .hub import HUB_SOURCES as hub  # the hub route of siamese_utils.datasets.hub, where there is one

    rows = []
    for info in DATASETS.values():
        sizes = [f.size for f in info.files]
        if info.shipped:
            download_size = "shipped"
        elif all(s is not None for s in sizes):
            download_size = human_bytes(sum(sizes))
        else:
            download_size = " + ".join(f.human_size for f in info.files)
        rows.append(
            {
                "name": info.name,
                "train": info.splits.get("train", 0),
                "val": info.splits.get("val", 0),
                "test": info.splits.get("test", 0),
                "download": download_size,
                "access": "shipped" if info.shipped else "open" if info.openly_downloadable else "request form",
                "checked": "; ".join(f"{f.filename}: {_checks(f)}" for f in info.files) or "-",
                "or from the hub": f"--from-hub: {hub[info.name].repo}" if info.name in hub else "-",
            }
        )
    return pd.DataFrame(rows).set_index("name")


def _checks(f: RemoteFile) -> str:
    """What is checked of a file: "size and sha256", "md5 (no size published)", ..."""
    algorithm = f.checksum.split(":")[0] if f.checksum else ""
    if f.size is None:
        return f"{algorithm} (no size published)"
    return f"size and {algorithm}" if algorithm else "size (no checksum published)"


def human_bytes(n: int) -> str:
    """A byte count for people: "36.7 MB".

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


_human = human_bytes


def _command(name: str, root: Path) -> str:
    root_flag = "" if Path(root) == Path("data") else f" --root {root}"
    return f"python -m siamese_utils download {name}{root_flag}"


def manual_steps(name: str | DatasetInfo, root: str | os.PathLike = "data") -> str:
    """The steps to get a dataset whose files are handed out by request, and the command that checks them.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    info = name if isinstance(name, DatasetInfo) else dataset_info(name)
    root = Path(root)
    folder = root / DOWNLOADS
    manual = [f for f in info.files if f.manual]
    lines = [(f"{info.name}'s images are handed out by their authors after a request form, so they cannot be "
              "downloaded automatically. To get them:")]
    for i, f in enumerate(manual, 1):
        lines.append(f"  {i}. {f.how_to_get[0].upper() + f.how_to_get[1:]} ({f.human_size}).")
        lines.append(f"     Save it, under that exact name, as {folder / f.filename}")
    n = len(manual)
    lines.append(f"  {n + 1}. Run: {_command(info.name, root)}")
    for f in manual:
        algorithm = f.checksum.split(":")[0].upper() if f.checksum else ""
        what = f"size and {algorithm}" if f.size is not None and algorithm else algorithm or "size"
        lines.append(f"     It checks {f.filename}'s {what} against the values published in {f.source},")
    lines.append(f"     fetches Karpathy's split file and lays the dataset out in {root / info.name}.")
    from .hub import HUB_SOURCES, INSTALL_HINT

    if info.name in HUB_SOURCES:
        lines.append(f"Or, with no form: {_command(info.name, root)} --from-hub (streams {HUB_SOURCES[info.name].repo} "
                     f"from the Hugging Face hub; needs {INSTALL_HINT})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- downloading and verifying


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _read_stamp(path: Path, checksum: str | None, size: int | None) -> bool:
    """Whether ``path`` was verified before and has not changed since (same size and modification time)."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": checksum, "expected_size": size}


def _write_stamp(path: Path, checksum: str | None, size: int | None) -> None:
    st = path.stat()
    atomic_write_text(_stamp_path(path), json.dumps(
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": checksum, "expected_size": size}))


def _mismatch(path: Path, size: int | None, checksum: str | None, progress: bool) -> str | None:
    """How ``path`` differs from the published size and checksum, or None."""
    from tqdm.auto import tqdm

    got_size = path.stat().st_size
    if size is not None and got_size != size:
        return f"{got_size:,} bytes, expected {size:,}"
    if checksum is None:
        return None
    algorithm, _, expected = checksum.partition(":")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f, tqdm(total=got_size, unit="B", unit_scale=True, desc=f"checking {path.name}",
                                     disable=not progress, leave=False) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() != expected.lower():
        return f"{algorithm} {digest.hexdigest()}, expected {expected}"
    return None


def verify_file(path: str | os.PathLike, size: int | None = None, checksum: str | None = None,
                progress: bool = False) -> None:
    """Check a file's size and checksum (``"sha256:HEX"``, ``"md5:HEX"``); raise :class:`DownloadError` if they differ.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    path = Path(path)
    problem = _mismatch(path, size, checksum, progress)
    if problem:
        raise DownloadError(f"{path}: {problem}")


def _set_aside(path: Path, dest: Path, problem: str, what_to_do: str) -> DownloadError:
    """Move a file that failed verification to DEST.corrupt, so it is never taken for the real one."""
    corrupt = dest.with_name(dest.name + ".corrupt")
    os.replace(path, corrupt)
    _stamp_path(dest).unlink(missing_ok=True)
    return DownloadError(f"{dest}: {problem}: not the published file (moved to {corrupt}). {what_to_do}")


def _check_mirror(mirror: str | None) -> None:
    if mirror is None:
        return
    parts = urllib.parse.urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"mirror {mirror!r} is not an http:// or https:// URL; give the address of a folder "
                         "that holds the files under their published names, e.g. http://host/datasets/")


def _url(rf: RemoteFile, mirror: str | None) -> str:
    if mirror is None:
        return rf.url
    return mirror.rstrip("/") + "/" + urllib.parse.quote(rf.filename)


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download_file(url: str, dest: str | os.PathLike, size: int | None = None, checksum: str | None = None,
                  progress: bool = True, retries: int = 2, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` with resuming, then verify its size and checksum.

    Bytes arrive in ``DEST.part``; a ``.part`` left by an interrupted run is
    resumed with an HTTP ``Range`` request (a server that ignores it sends the
    whole file, and the download restarts cleanly). A dropped connection is
    resumed up to ``retries`` times. Only a verified file is renamed to
    ``dest``; one that fails is moved to ``DEST.corrupt`` and
    :class:`DownloadError` says so. A ``dest`` already verified (a
    ``DEST.verified`` stamp matching its size and time) is not fetched again.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.is_file():
        if _read_stamp(dest, checksum, size):
            return dest
        problem = _mismatch(dest, size, checksum, progress)
        if problem:
            raise _set_aside(dest, dest, problem, "Run the command again to download it afresh.")
        _write_stamp(dest, checksum, size)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    host = urllib.parse.urlsplit(url).netloc
    problem = ""
    for _attempt in range(retries + 1):
        start = part.stat().st_size if part.is_file() else 0
        if size is not None and start > size:  # not a prefix of this file: start again
            part.unlink()
            start = 0
        if size is not None and start == size:
            break
        try:
            response = _open(url, start, timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:  # nothing left to send: the .part is complete (verified below)
                break
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; check the address (or --mirror) and try again"
                                ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            problem = f"could not reach {host} ({reason})"
            continue
        with response:
            content_range = response.headers.get("Content-Range", "")
            resumed = start > 0 and response.status == 206 and content_range.startswith(f"bytes {start}-")
            if response.status == 206 and not resumed:  # a range we did not ask for: start again from scratch
                part.unlink(missing_ok=True)
                problem = f"{host} answered with the wrong range ({content_range!r})"
                continue
            if not resumed:
                start = 0  # the server sent the whole file: restart cleanly
            length = response.headers.get("Content-Length")
            expected_total = start + int(length) if length is not None else size
            received, dropped = start, ""
            try:
                with open(part, "ab" if resumed else "wb") as out, tqdm(
                    total=expected_total, initial=start, unit="B", unit_scale=True, desc=dest.name,
                    disable=not progress,
                ) as bar:
                    while True:
                        try:
                            chunk = response.read(CHUNK)
                        except (http.client.IncompleteRead, OSError) as e:  # reset, timeout, ...
                            dropped = type(e).__name__
                            break
                        if not chunk:
                            break
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            except OSError as e:  # writing: a full disk, a read-only folder
                raise DownloadError(f"{part}: cannot write ({e.strerror or e}); free some space or choose another "
                                    "--root, then run the command again to resume") from None
            if dropped:
                problem = f"the connection to {host} dropped after {received:,} bytes ({dropped})"
                continue
        if expected_total is not None and received < expected_total:
            problem = f"the connection to {host} dropped after {received:,} of {expected_total:,} bytes"
            continue
        break
    else:
        if part.is_file() and part.stat().st_size:
            then = f"the {part.stat().st_size:,} bytes received are kept in {part}: run the command again to resume"
        else:
            then = "check the connection (or --mirror) and run the command again"
        raise DownloadError(f"{url}: {problem}; {then}")
    problem = _mismatch(part, size, checksum, progress)
    if problem:
        raise _set_aside(part, dest, f"{problem} (downloaded from {url})", "Run the command again to download it "
                         "afresh; if it fails again, the server (or --mirror) serves a different file.")
    os.replace(part, dest)
    _write_stamp(dest, checksum, size)
    return dest


# --------------------------------------------------------------------------- safe extraction


def _unsafe_name(name: str) -> str | None:
    """Why an archive path would escape its folder, or None."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "a path that climbs out with '..'"
    return None


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    why = _unsafe_name(member.name)
    if why:
        return why
    if member.issym():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
            return f"a symbolic link to the absolute path {member.linkname!r}"
        resolved = os.path.normpath(os.path.join(os.path.dirname(member.name), target))
        if resolved == ".." or resolved.startswith("../"):
            return f"a symbolic link to {member.linkname!r}, outside the folder"
    elif member.islnk():
        if _unsafe_name(member.linkname):
            return f"a hard link to {member.linkname!r}, outside the folder"
    elif not (member.isfile() or member.isdir()):
        return "a device, pipe or other special file"
    return None


def _members(archive: Path) -> list[str]:
    """Every member's name, after refusing the archive if any member would land outside its folder."""
    bad: list[str] = []
    names: list[str] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                why = _unsafe_name(info.filename)
                if why is None and stat.S_ISLNK(info.external_attr >> 16):
                    why = "a symbolic link"
                (bad.append(f"{info.filename!r}: {why}") if why else names.append(info.filename))
    else:
        try:
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    why = _tar_problem(member)
                    (bad.append(f"{member.name!r}: {why}") if why else names.append(member.name))
        except tarfile.TarError as e:
            raise DatasetError(f"{archive}: neither a zip nor a tar archive ({e}); delete it and download it again"
                               ) from None
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UnsafeArchiveError(f"{archive}: refused, {len(bad)} member(s) would be written outside the target "
                                 f"folder: {shown}. Nothing was extracted; do not use this archive.")
    return names


def _extract_into(archive: Path, folder: Path, wanted: Callable[[str], bool] = lambda name: True,
                  progress: bool = False) -> None:
    """Extract the members ``wanted`` selects into ``folder``, after checking every member is safe."""
    from tqdm.auto import tqdm

    names = {n for n in _members(archive) if wanted(n)}
    bar = tqdm(total=len(names), unit=" files", desc=f"extracting {archive.name}", disable=not progress)
    with bar:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in sorted(names):
                    zf.extract(name, folder)
                    bar.update()
        else:
            # Python >= 3.11.4 and 3.10.12 also apply the library's own "data" filter; older ones have the checks above.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with tarfile.open(archive) as tf:
                for member in tf:
                    if member.name in names:
                        tf.extract(member, folder, **extra)
                        bar.update()


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into a new folder ``target``, all or nothing.

    Every member is checked first: an absolute path, a ``..`` that climbs out,
    or a link pointing outside makes :class:`UnsafeArchiveError` name the member
    and nothing is written. The archive is extracted into a temporary folder
    beside ``target`` and renamed into place when complete; an existing,
    non-empty ``target`` is refused rather than touched.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise FileExistsError(f"{target} already exists; extract into a new folder, or move it aside first")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.extracting-"))
    try:
        _extract_into(archive, staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- datasets


def _matches(member: str, source: str) -> bool:
    member = member.rstrip("/")
    if source.endswith("/"):
        return member == source.rstrip("/") or member.startswith(source)
    return member == source or member.endswith("/" + source)


def _assemble(archives: list[tuple[RemoteFile, Path]], staging: Path, progress: bool) -> Path:
    """Extract what each archive contributes into ``staging/dataset``, laid out as read_dataset expects."""
    dataset = staging / "dataset"
    dataset.mkdir()
    for k, (rf, archive) in enumerate(archives):
        raw = staging / f"archive{k}"
        raw.mkdir()
        _extract_into(archive, raw, lambda name, rules=rf.extract: any(_matches(name, src) for src, _ in rules),
                      progress=progress)
        for src, dst in rf.extract:
            if src.endswith("/"):
                found = raw / src.rstrip("/")
            else:
                hits = sorted(raw.rglob(PurePosixPath(src).name))
                hits = [h for h in hits if h.relative_to(raw).as_posix().endswith(src)]
                found = hits[0] if hits else raw / src
            if not found.exists():
                raise DatasetError(f"{archive}: no {src!r} inside; is it {rf.filename} as published? Delete it and "
                                   "download it again")
            out = dataset / dst.rstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(found, out)
    return dataset


def check_counts(info: DatasetInfo, data: CaptionedImages, where: Path) -> None:
    """Refuse ``data`` unless its images per split are ``info.splits``; the error names both.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    got = {split: len(data.split(split)) for split in info.splits}
    if got != dict(info.splits):
        raise DatasetError(f"{where}: images per split {got}, expected {dict(info.splits)} for {info.name}; "
                           "the split file or an archive is not the published one")


def is_complete(info: DatasetInfo, folder: Path) -> bool:
    """Whether ``folder`` holds a dataset.json that reads with ``info``'s images per split.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    if not (folder / "dataset.json").is_file():
        return False
    try:
        check_counts(info, read_dataset(folder), folder)
    except DatasetError:
        return False
    return True


def download(name: str | DatasetInfo, root: str | os.PathLike = "data", mirror: str | None = None,
             progress: bool = True, retries: int = 2, timeout: float = 60.0,
             log: Callable[[str], None] | None = print) -> Path:
    """Fetch, verify and lay out a dataset of the registry in ``root/NAME``; return that folder.

    Archives go to ``root/downloads/`` (see :func:`download_file`: resumable,
    verified, never fetched twice). ``mirror`` replaces each file's address
    with ``MIRROR/FILENAME``. Files handed out by request (Flickr8k, Flickr30k)
    must be put in ``root/downloads/`` first; while one is missing,
    :class:`ManualDownloadRequired` gives the steps, before any network access.
    The dataset is assembled in a temporary folder beside ``root/NAME``,
    checked with :func:`~siamese_utils.core.data.read_dataset` against the registry's
    images per split, and only then moved into place; a complete ``root/NAME``
    is left as it is, an incomplete one is never overwritten.

    Explained in ``notebooks/09_scaling_up.ipynb`` and ``data/README.md``.
    """
    info = name if isinstance(name, DatasetInfo) else dataset_info(name)
    _check_mirror(mirror)
    root = Path(root)
    say = log or (lambda line: None)
    target = root / info.name
    if info.shipped:
        if not is_complete(info, target):
            from .tiny import write_tiny_dataset

            write_tiny_dataset(target)
            say(f"wrote {target}")
        return target
    if is_complete(info, target):
        say(f"{target} is complete: nothing to do")
        return target
    if target.exists() and any(target.iterdir()):
        problem = "no dataset.json"
        if (target / "dataset.json").is_file():
            try:
                check_counts(info, read_dataset(target), target)
            except DatasetError as e:
                problem = str(e).splitlines()[0]
        raise DatasetError(f"{target} exists but is not a complete {info.name} ({problem}); move it aside or "
                           f"delete it, then run {_command(info.name, root)} again (archives already in "
                           f"{root / DOWNLOADS} are not fetched again)")
    downloads = root / DOWNLOADS
    missing = [f for f in info.files if f.manual and not (downloads / f.filename).is_file()]
    if missing:
        raise ManualDownloadRequired(manual_steps(info, root))
    archives = []
    for rf in info.files:
        dest = downloads / rf.filename
        if rf.manual:
            if not _read_stamp(dest, rf.checksum, rf.size):
                say(f"checking {dest}")
                problem = _mismatch(dest, rf.size, rf.checksum, progress)
                if problem:
                    raise _set_aside(dest, dest, problem, f"Get it again: {rf.how_to_get}.")
                _write_stamp(dest, rf.checksum, rf.size)
        else:
            if dest.is_file() and not _read_stamp(dest, rf.checksum, rf.size):
                say(f"checking {dest}")
            elif not dest.is_file():
                say(f"fetching {rf.filename} ({rf.human_size}) from {_url(rf, mirror)}")
            download_file(_url(rf, mirror), dest, rf.size, rf.checksum, progress=progress, retries=retries,
                          timeout=timeout)
        archives.append((rf, dest))
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{info.name}.extracting-"))
    try:
        say(f"extracting into {target}")
        dataset = _assemble(archives, staging, progress)
        check_counts(info, read_dataset(dataset), target)
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(dataset, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"{target}: ready")
    return target


def load_dataset(name: str, root: str | os.PathLike = "data", check_files: bool = True) -> CaptionedImages:
    """Read ``root/NAME`` of the registry; if it is missing, the error says exactly how to get it.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    info = dataset_info(name)
    root = Path(root)
    folder = root / info.name
    if info.shipped:
        how = f"python -m siamese_utils make-tiny --out {folder}"
    elif info.openly_downloadable:
        how = _command(info.name, root)
    else:
        how = "\n" + manual_steps(info, root)
    if not (folder / "dataset.json").is_file():
        raise DatasetError(f"{folder}: no dataset.json, {info.name} is not there yet. To get it: {how}")
    try:
        return read_dataset(folder, check_files=check_files)
    except DatasetError as e:
        raise DatasetError(f"{e}\nTo get {info.name} again, move {folder} aside and run: {how}") from None
