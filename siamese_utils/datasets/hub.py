"""Flickr8k and Flickr30k from the Hugging Face hub, written in the series' own format, without a request form.

Explained in ``notebooks/09_scaling_up.ipynb`` (section 1) and in ``README.md``.

``python -m siamese_utils download flickr30k --from-hub`` streams ``nlphuji/flickr30k``
(columns ``image``, ``caption`` (five), ``split``, ``img_id``, ``filename``; Karpathy's
split in its ``split`` column) or ``jxie/flickr8k`` (``image``, ``caption_0`` ...
``caption_4``; the hub's own train / validation / test splits, and a seeded
validation split carved from train where none is served) with the ``datasets``
library and writes what :func:`siamese_utils.core.data.read_dataset` reads:
``ROOT/NAME/dataset.json`` in Karpathy's layout and the photographs as JPEG files
in ``ROOT/NAME/images/``.

The import follows the registry's conventions (:mod:`siamese_utils.datasets.registry`):
it is built in a staging folder beside its destination, ``ROOT/.NAME.hub-partial``,
and renamed into place only once it reads with the expected images per split, so
a half-written folder is never taken for a complete one. The staging folder logs
every row as it is written (``rows.jsonl``): an interrupted import continues where
it stopped, and a complete ``ROOT/NAME`` is never redone. Malformed rows (a missing
caption, an image that does not decode, a split that is not a split) are named by
row and install nothing; neither do counts that differ from the expected ones.

The hub is reached in one function, :func:`load_hub_dataset`; given the path of a
copy saved with ``datasets``' ``save_to_disk`` it reads that instead (the tests do).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

from ..core.data import DatasetError, read_dataset
from ..core.runtime import atomic_write, atomic_write_text
from .registry import DatasetInfo, DownloadError, check_counts, dataset_info, human_bytes, is_complete

__all__ = [
    "HubSource",
    "HUB_SOURCES",
    "HubUnavailable",
    "INSTALL_HINT",
    "hub_source",
    "require_datasets",
    "load_hub_dataset",
    "import_from_hub",
]

INSTALL_HINT = 'pip install -e ".[hub]"'
OFFLINE_VARIABLES = ("SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# The hub's split names, and what each is in Karpathy's layout.
SPLIT_NAMES = {"train": "train", "restval": "restval", "validation": "val", "val": "val", "valid": "val",
               "dev": "val", "test": "test"}
LOG = "rows.jsonl"  # in the staging folder: one line per row read, written after its image
STAMP = "import.json"  # in the staging folder: what the import is of, checked on resume
JPEG_QUALITY = 95  # for the rare image the hub serves in another format
# The hub's own parquet conversion of a dataset, read when the dataset's loading script cannot be run (datasets >= 4
# runs no scripts).
PARQUET_REVISION = "refs/convert/parquet"


class HubUnavailable(DatasetError):
    """The hub cannot be reached (offline, no network) or does not hold the dataset; nothing was written.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """


@dataclass(frozen=True)
class HubSource:
    """Where a dataset lives on the hub, which columns hold what, and the images per split it must give.

    ``captions`` names one column holding a list of captions (``"caption"``) or
    several columns of one caption each (``("caption_0", ...)``). ``split_column``
    names the column holding each row's split; ``None`` takes the hub's split the
    row is served in. ``splits`` counts images after the import, ``train``
    including ``restval``; where no validation split is served, ``carve_val``
    moves ``splits["val"]`` training images, drawn with ``seed``, to ``val``.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    name: str
    repo: str
    captions: str | tuple[str, ...]
    splits: Mapping[str, int]
    split_column: str | None = None
    filename_column: str | None = None
    carve_val: bool = False
    seed: int = 0
    image_column: str = "image"
    notes: str = field(default="", compare=False)

    @property
    def num_images(self) -> int:
        return sum(self.splits.values())

    def info(self) -> DatasetInfo:
        """The registry entry the import is checked against: this source's images per split."""
        base = dataset_info(self.name) if self.name in ("flickr8k", "flickr30k") else None
        return DatasetInfo(name=self.name, title=base.title if base else self.name,
                           homepage=f"https://huggingface.co/datasets/{self.repo}", splits=dict(self.splits))


HUB_SOURCES: dict[str, HubSource] = {
    "flickr8k": HubSource(
        name="flickr8k", repo="jxie/flickr8k", captions=tuple(f"caption_{i}" for i in range(5)),
        splits={"train": 6000, "val": 1000, "test": 1000}, carve_val=True,
        notes="the hub's train / validation / test; validation carved from train (seed 0) where not served",
    ),
    "flickr30k": HubSource(
        name="flickr30k", repo="nlphuji/flickr30k", captions="caption", split_column="split",
        filename_column="filename", splits={"train": 29000, "val": 1014, "test": 1000},
        notes="Karpathy's split, in the split column of one served split",
    ),
}


def hub_source(name: str) -> HubSource:
    """The hub route of ``name``; any other name says which datasets have one and how to get the rest.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    try:
        return HUB_SOURCES[name]
    except (KeyError, TypeError):
        other = f"python -m siamese_utils download {name}" if name in ("coco", "tiny") else "see download --list"
        raise DatasetError(f"--from-hub takes {' or '.join(HUB_SOURCES)}, not {name!r} ({other})") from None


# --------------------------------------------------------------------------- the boundary: the hub itself


def require_datasets():
    """The ``datasets`` module, or an ImportError whose one line says what to install.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError(f"importing from the Hugging Face hub needs the datasets package: {INSTALL_HINT} "
                          "(or pip install datasets)") from None
    return datasets


def load_hub_dataset(repo: str) -> Mapping[str, Iterable[dict]]:
    """``{hub split: rows}`` of a hub dataset, streamed, with images as undecoded ``{"bytes", "path"}``.

    ``repo`` is a hub name (``"nlphuji/flickr30k"``) or the folder of a copy saved
    with ``save_to_disk`` (a ``Dataset`` counts as one split, ``train``). This is
    the only function that reaches the hub; with ``SIAMESE_OFFLINE``, ``HF_HUB_OFFLINE``
    or ``HF_DATASETS_OFFLINE`` set, or no network, it raises :class:`HubUnavailable`.
    A dataset the hub serves through a loading script, which ``datasets`` 4 and later
    no longer run, is read from the hub's parquet conversion (``refs/convert/parquet``).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    datasets = require_datasets()
    if Path(repo).is_dir():
        loaded = datasets.load_from_disk(str(repo))
        parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    else:
        offline = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "") not in ("", "0")]
        if offline:
            raise HubUnavailable(f"the Hugging Face hub is not reached while {offline[0]}={os.environ[offline[0]]} "
                                 f"is set (offline); unset it on a machine with a network to import {repo}")
        parts = None
        for revision in (None, PARQUET_REVISION):
            try:
                parts = datasets.load_dataset(repo, streaming=True, revision=revision)
                break
            except (ConnectionError, OSError) as e:
                raise HubUnavailable(f"could not reach {repo} on the Hugging Face hub ({_first_line(e)}); check "
                                     "the network, then run the command again") from None
            except Exception as e:  # a loading script this datasets release no longer runs; DatasetNotFoundError
                problem = f"{type(e).__name__}: {_first_line(e)}"
        if parts is None:
            raise HubUnavailable(f"could not load {repo} from the Hugging Face hub, nor its parquet conversion "
                                 f"({problem}); try another version of datasets, or the request-form route "
                                 "(python -m siamese_utils download NAME without --from-hub)")
    undecoded = datasets.Image(decode=False)
    return {split: rows.cast_column("image", undecoded) if "image" in (rows.column_names or ()) else rows
            for split, rows in parts.items()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --------------------------------------------------------------------------- one row


class _RowProblem(ValueError):
    pass


def _captions(source: HubSource, row: Mapping[str, Any]) -> list[str]:
    if isinstance(source.captions, str):
        value = row.get(source.captions)
        if isinstance(value, str) and value.lstrip().startswith("["):  # a list stored as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise _RowProblem(f"{source.captions} is not a list of captions: {value[:60]!r}") from None
        if not isinstance(value, (list, tuple)) or not value:
            raise _RowProblem(f"{source.captions} is missing or empty (found {value!r:.60})")
        named = [(f"{source.captions}[{i}]", c) for i, c in enumerate(value)]
    else:
        named = [(column, row.get(column)) for column in source.captions]
    captions = []
    for where, caption in named:
        if not isinstance(caption, str) or not caption.strip():
            raise _RowProblem(f"{where} is missing (found {caption!r:.60})")
        captions.append(" ".join(caption.split()))
    return captions


def _split(source: HubSource, hub_split: str, row: Mapping[str, Any]) -> str:
    value = row.get(source.split_column) if source.split_column else hub_split
    split = SPLIT_NAMES.get(value) if isinstance(value, str) else None
    if split is None:
        where = f"column {source.split_column!r}" if source.split_column else "the hub split"
        raise _RowProblem(f"split {value!r} (in {where}) is not one of {', '.join(SPLIT_NAMES)}")
    return split


def _jpeg(image: Any) -> tuple[bytes, str | None]:
    """The image as JPEG bytes (the hub's own bytes when they are a JPEG) and its original path, if any."""
    from PIL import Image, UnidentifiedImageError

    path = None
    if isinstance(image, Image.Image):
        picture, data = image, None
    elif isinstance(image, Mapping) and (image.get("bytes") or image.get("path")):
        path = image.get("path")
        data = image.get("bytes")
        if data is None:
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise _RowProblem(f"image file {path} cannot be read ({e.strerror or e})") from None
        try:
            picture = Image.open(io.BytesIO(data))
            if picture.format == "JPEG":
                picture.draft("RGB", (64, 64))  # decodes every block, at an eighth of the size: fast, still complete
            picture.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise _RowProblem(f"image does not decode ({_first_line(e)})") from None
    else:
        raise _RowProblem(f"image is missing (found {type(image).__name__})")
    if data is not None and picture.format == "JPEG":
        return data, path
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), path


def _filename(source: HubSource, hub_split: str, index: int, row: Mapping[str, Any], path: str | None) -> str:
    for candidate in (row.get(source.filename_column) if source.filename_column else None, path):
        if isinstance(candidate, str) and candidate:
            name = PurePosixPath(candidate.replace("\\", "/")).name
            if re.fullmatch(r"[\w][\w.-]*", name):
                return str(PurePosixPath(name).with_suffix(".jpg"))
    return f"{hub_split}_{index:06d}.jpg"


# --------------------------------------------------------------------------- the import


def _staging(root: Path, name: str) -> Path:
    return root / f".{name}.hub-partial"


def _read_log(path: Path) -> list[dict]:
    """The rows logged so far; a last line cut short by an interruption is dropped (its row is read again)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    done = []
    for line in lines[:-1]:  # every complete line ends with a newline
        done.append(json.loads(line))
    if lines[-1]:
        path.write_text("".join(line + "\n" for line in lines[:-1]), encoding="utf-8")
    return done


def _split_order(names: Iterable[str]) -> list[str]:
    rank = {"train": 0, "restval": 1, "val": 2, "test": 3}
    return sorted(names, key=lambda s: (rank.get(SPLIT_NAMES.get(s, ""), 4), s))


def _shown_rows(problems: list[dict]) -> str:
    shown = "; ".join(f"row {p['row']} of {p['hub_split']}: {p['problem']}" for p in problems[:8])
    return shown + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")


def _entries(rows: list[dict], source: HubSource) -> list[dict]:
    """Karpathy's image entries, in the order the hub serves the rows, with the validation split carved if needed."""
    order = {s: i for i, s in enumerate(_split_order({r["hub_split"] for r in rows}))}
    rows = sorted(rows, key=lambda r: (order[r["hub_split"]], r["row"]))
    splits = [r["split"] for r in rows]
    if source.carve_val and "val" not in splits:
        train = [i for i, s in enumerate(splits) if s == "train"]
        for i in random.Random(source.seed).sample(train, min(source.splits.get("val", 0), len(train))):
            splits[i] = "val"
    entries, sentid = [], 0
    for imgid, (r, split) in enumerate(zip(rows, splits)):
        sentences = [{"raw": c, "tokens": re.findall(r"[a-z0-9]+(?:'[a-z]+)?", c.lower()), "imgid": imgid,
                      "sentid": sentid + k} for k, c in enumerate(r["captions"])]
        entries.append({"filename": r["filename"], "imgid": imgid, "split": split,
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
                        "hub": {"split": r["hub_split"], "row": r["row"]}})
        sentid += len(sentences)
    return entries


def _count_problem(source: HubSource, entries: list[dict]) -> str:
    got = {split: 0 for split in source.splits}
    for e in entries:
        split = "train" if e["split"] == "restval" else e["split"]
        got[split] = got.get(split, 0) + 1
    parts = []
    for split, want in source.splits.items():
        have = got.get(split, 0)
        if have != want:
            how = f"{want - have:,} missing" if have < want else f"{have - want:,} more than expected"
            parts.append(f"{split} has {have:,} images, expected {want:,} ({how})")
    return "; ".join(parts)


def _dataset_json(source: HubSource, entries: list[dict]) -> str:
    head = json.dumps({"dataset": source.name, "source": {"hub": source.repo}}, ensure_ascii=False)[:-1]
    body = ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries)
    return f'{head},"images":[\n{body}\n]}}\n'


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def import_from_hub(name: str | HubSource, root: str | os.PathLike = "data", progress: bool = True,
                    log: Callable[[str], None] | None = print) -> Path:
    """Import Flickr8k or Flickr30k from the hub into ``root/NAME``, resumably and atomically; return the folder.

    A complete ``root/NAME`` (its dataset.json reads with the expected images per
    split) is left as it is, without touching the hub; a non-empty incomplete one
    is refused, never overwritten. The rows are streamed into ``root/.NAME.hub-partial``
    (continued if an earlier import was interrupted), each image checked to decode
    and written as a JPEG, each row's captions and split checked. Then the split
    sizes are checked against ``HubSource.splits``, ``dataset.json`` is written and
    the folder renamed into place. Malformed rows or wrong counts raise
    :class:`~siamese_utils.datasets.registry.DownloadError` naming the rows or the
    splits, and remove the staging folder: nothing is installed. A stream that
    breaks off raises it too and keeps the staging folder, to continue from.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    source = name if isinstance(name, HubSource) else hub_source(name)
    from tqdm.auto import tqdm

    say = log or (lambda line: None)
    root = Path(root)
    target, info = root / source.name, source.info()
    if is_complete(info, target):
        say(f"{target} is complete: nothing to do")
        return target
    if target.exists() and any(target.iterdir()):
        raise DatasetError(f"{target} exists but is not a complete {source.name} imported from {source.repo}; move "
                           f"it aside or delete it, then run python -m siamese_utils download {source.name} "
                           "--from-hub again")
    require_datasets()
    staging = _staging(root, source.name)
    stamp = {"name": source.name, "repo": source.repo, "splits": dict(source.splits), "seed": source.seed}
    if staging.is_dir() and (staging / STAMP).is_file():
        before = json.loads((staging / STAMP).read_text(encoding="utf-8"))
        if before != stamp:
            raise DatasetError(f"{staging} holds an interrupted import of {before.get('repo')} with other settings "
                               f"({before}); delete it to start afresh")
    rows = _read_log(staging / LOG)
    say(f"importing {source.name} from the Hugging Face hub ({source.repo}): "
        + " / ".join(f"{n:,}" for n in source.splits.values()) + f" images expected ({' / '.join(source.splits)})"
        + (f"; continuing after the {len(rows):,} rows read before" if rows else ""))
    parts = load_hub_dataset(source.repo)
    (staging / "images").mkdir(parents=True, exist_ok=True)
    atomic_write_text(staging / STAMP, json.dumps(stamp, indent=1) + "\n")
    done = {(r["hub_split"], r["row"]) for r in rows}
    owner = {r["filename"]: r for r in rows if "filename" in r}
    bar = tqdm(total=source.num_images, initial=len(rows), unit=" images", desc=source.name, disable=not progress)
    with bar, open(staging / LOG, "a", encoding="utf-8") as out:
        for hub_split in _split_order(parts):
            index = -1
            try:
                for index, row in enumerate(parts[hub_split]):
                    if (hub_split, index) in done:
                        continue
                    record = _read_row(source, hub_split, index, row, staging, owner)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    rows.append(record)
                    bar.update()
            except (ConnectionError, OSError, RuntimeError) as e:
                raise DownloadError(f"{source.repo}: the stream broke off after row {index} of {hub_split} "
                                    f"({type(e).__name__}: {_first_line(e)}); the {len(rows):,} rows read are kept "
                                    f"in {staging}: run the command again to continue") from None
    problems = [r for r in rows if "problem" in r]
    if problems:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{source.repo}: {len(problems)} malformed row(s), so nothing was installed in {target}: "
                            f"{_shown_rows(problems)}")
    entries = _entries(rows, source)
    problem = _count_problem(source, entries)
    if problem:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{source.repo}: {problem}; nothing was installed in {target} (is {source.repo} the "
                            "dataset this importer knows, or has it changed?)")
    for leftover in (staging / "images").glob(".*.tmp"):  # an image write cut off by a killed process
        leftover.unlink()
    atomic_write_text(staging / "dataset.json", _dataset_json(source, entries))
    check_counts(info, read_dataset(staging), target)
    (staging / LOG).unlink()
    (staging / STAMP).unlink()
    if target.exists():
        target.rmdir()  # empty (checked above)
    os.replace(staging, target)
    say(f"{target}: ready, {len(entries):,} images, {sum(len(e['sentences']) for e in entries):,} captions, "
        f"{human_bytes(_folder_bytes(target))} on disk")
    return target


def _read_row(source: HubSource, hub_split: str, index: int, row: Mapping[str, Any], staging: Path,
              owner: dict[str, dict]) -> dict:
    """Check one row and write its image; the log record (or the row's problem)."""
    record: dict[str, Any] = {"hub_split": hub_split, "row": index}
    try:
        split = _split(source, hub_split, row)
        captions = _captions(source, row)
        data, path = _jpeg(row.get(source.image_column))
        filename = _filename(source, hub_split, index, row, path)
        if filename in owner:
            first = owner[filename]
            raise _RowProblem(f"file name {filename} is also row {first['row']} of {first['hub_split']}")
    except _RowProblem as e:
        return {**record, "problem": str(e)}
    atomic_write(staging / "images" / filename, lambda tmp: tmp.write_bytes(data))
    record.update(filename=filename, split=split, captions=captions)
    owner[filename] = record
    return record
