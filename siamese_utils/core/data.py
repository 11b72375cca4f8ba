"""Datasets on disk and in PyTorch: one format for the tiny set, Flickr8k/30k and COCO.

Explained in ``notebooks/01_preprocessing.ipynb``.

A dataset is a folder holding Karpathy's split file ``dataset.json`` and the images at
``images/<filepath>/<filename>``::

    {"images": [{"filename": "000000.png", "split": "train",
                 "sentences": [{"raw": "a small red circle"}, ...]}, ...]}

``filepath`` is optional (COCO uses it); ``split`` is ``train``, ``val``, ``test`` or ``restval`` (COCO's extra training
images, counted as train); other fields are kept. Your own data can instead come as ``captions.csv`` with
``image,caption`` rows (optional ``split`` column) beside ``images/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .runtime import epoch_seed, seed_worker
from .text import swap_left_right
from .transforms import CaptionAwareHorizontalFlip

__all__ = ["DatasetError", "ImageRecord", "CaptionedImages", "read_dataset", "read_karpathy_json", "read_captions_csv",
           "load_image", "to_rgb", "ImageTextDataset", "ImageDataset", "Batch", "Collator", "make_loader"]

SPLITS = ("train", "val", "test", "restval")
TRAIN_SPLITS = ("train", "restval")  # restval is COCO's extra training data
MAX_PROBLEMS_SHOWN = 10
FORMAT_HELP = "see 'Datasets' in the README for the expected layout"


class DatasetError(ValueError):
    """A dataset file, entry or image is wrong. The message names it and says what to do."""


def _raise_problems(source: Path, problems: list[str], what_to_do: str) -> None:
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(f"{source}: {len(problems)} problem(s):\n{shown}{tail}\n{what_to_do}")


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ImageRecord:
    """One image and its captions, as read from a dataset file."""

    index: int  # position in the dataset file; stable across splits
    name: str  # the image's path below images/: "<filepath>/<filename>" or "<filename>"
    path: Path  # where the image file is
    split: str  # train, val, test or restval, as written in the file
    captions: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the entry's other fields
    origin: str = field(default="", compare=False, repr=False)  # where the file defines it, for messages


class CaptionedImages(Sequence[ImageRecord]):
    """Images with their captions (the dataset or a split); ``txt_to_img[j]``: the position of caption ``j``'s image."""

    def __init__(self, records: Sequence[ImageRecord], source: Path, name: str = "all"):
        self.records, self.source, self.name = list(records), Path(source), name

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return CaptionedImages(self.records[i], self.source, self.name)
        return self.records[i]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"CaptionedImages({self.name!r}: {len(self)} images, {self.num_captions} captions, from {self.source})"

    def split(self, name: str) -> "CaptionedImages":
        """The images of one split; ``"train"`` includes ``restval``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        wanted = TRAIN_SPLITS if name == "train" else (name,)
        return CaptionedImages([r for r in self.records if r.split in wanted], self.source, name)

    @property
    def captions(self) -> list[str]:
        """All captions, in image order."""
        return [c for r in self.records for c in r.captions]

    @property
    def num_captions(self) -> int:
        return sum(len(r.captions) for r in self.records)

    @property
    def txt_to_img(self) -> np.ndarray:
        """For each caption (in ``captions`` order), the position of its image."""
        return np.repeat(np.arange(len(self.records)), [len(r.captions) for r in self.records])

    def summary(self):
        """A table: images, captions and captions per image for each split."""
        import pandas as pd
        rows = []
        for split in ("train", "val", "test"):
            part = self.split(split)
            per = [len(r.captions) for r in part] or [0]
            rows.append({"split": split, "images": len(part), "captions": part.num_captions,
                         "captions/image": f"{min(per)}-{max(per)}" if min(per) != max(per) else str(min(per))})
        return pd.DataFrame(rows).set_index("split")

    def to_frame(self):
        """One row per caption: image index, image name, split and caption."""
        import pandas as pd
        return pd.DataFrame([{"image": i, "name": r.name, "split": r.split, "caption": c}
                             for i, r in enumerate(self.records) for c in r.captions])

    def check_images(self, progress: bool = False) -> None:
        """Decode every image; raise one :class:`DatasetError` listing those that fail."""
        from tqdm.auto import tqdm
        problems = []
        for r in tqdm(self.records, desc="checking images", disable=not progress):
            try:
                load_image(r.path)
            except DatasetError as e:
                problems.append(f"{r.origin or r.name}: {e}")
        if problems:
            _raise_problems(self.source, problems, "Replace or re-download these files, or remove their entries.")


# --------------------------------------------------------------------------- readers
def read_dataset(path: str | os.PathLike, check_files: bool = True, **csv_options: Any) -> CaptionedImages:
    """Read a dataset folder (``dataset.json`` or ``captions.csv``) or file; ``check_files``: every image must exist."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset.json").is_file():
            p = p / "dataset.json"
        elif (p / "captions.csv").is_file():
            p = p / "captions.csv"
        else:
            raise DatasetError(f"{p}: no dataset.json (Karpathy's split file) or captions.csv in this folder; "
                               f"{FORMAT_HELP}, or pass the file itself.")
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder; {FORMAT_HELP}.")
    if p.suffix.lower() == ".csv":
        return read_captions_csv(p, check_files=check_files, **csv_options)
    if csv_options:
        raise TypeError(f"options {sorted(csv_options)} apply to CSV files only, not {p.name}")
    return read_karpathy_json(p, check_files=check_files)


def read_karpathy_json(path: str | os.PathLike, images_root: str | os.PathLike | None = None,
                       check_files: bool = True) -> CaptionedImages:
    """Read Karpathy's ``dataset.json``; images are at ``images_root/<filepath>/<filename>`` (default: ``images/``)."""
    path = Path(path)
    root = Path(images_root) if images_root is not None else path.parent / "images"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; {FORMAT_HELP}.") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is this the right file?") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                           "the file may be truncated: download it again.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DatasetError(f'{path}: expected a JSON object with an "images" list (Karpathy\'s format); {FORMAT_HELP}.')

    records: list[ImageRecord] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(doc["images"]):
        where = f"images[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object, found {type(entry).__name__}")
            continue
        filename = entry.get("filename")
        if isinstance(filename, str) and filename:
            where += f" ({filename})"
        else:
            problems.append(f'{where}: missing "filename" (the image file\'s name)')
            continue
        filepath = entry.get("filepath", "") or ""
        if not isinstance(filepath, str):
            problems.append(f'{where}: "filepath" must be a string, found {filepath!r}')
            continue
        split = entry.get("split")
        if split not in SPLITS:
            problems.append(f'{where}: "split" is {split!r}; expected one of {", ".join(SPLITS)}')
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            problems.append(f'{where}: no "sentences"; each image needs at least one caption')
            continue
        captions = []
        for j, s in enumerate(sentences):
            raw = s.get("raw") if isinstance(s, dict) else None
            if raw is None:
                problems.append(f'{where}: sentences[{j}] has no "raw" caption text')
            elif not isinstance(raw, str):
                problems.append(f'{where}: sentences[{j}] "raw" must be text, found {raw!r}')
            elif not raw.strip():
                problems.append(f"{where}: sentences[{j}] is an empty caption; write one or remove it")
            else:
                captions.append(raw.strip())
        if len(captions) != len(sentences):
            continue
        name = f"{filepath}/{filename}" if filepath else filename
        if name in seen:
            problems.append(f"{where}: {name} is listed twice (also {seen[name]}); merge its captions into one entry")
            continue
        seen[name] = where
        meta = {k: v for k, v in entry.items() if k not in ("filename", "filepath", "split", "sentences")}
        records.append(ImageRecord(i, name, root / name, split, tuple(captions), meta, origin=where))
    if problems:
        _raise_problems(path, problems, f"Fix these entries in {path.name} or remove them; {FORMAT_HELP}.")
    if not records:
        raise DatasetError(f'{path}: the "images" list is empty; {FORMAT_HELP}.')
    if check_files:
        _check_files_exist(path, records, root)
    return CaptionedImages(records, path)


def read_captions_csv(path: str | os.PathLike, images_root: str | os.PathLike | None = None, check_files: bool = True,
                      val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> CaptionedImages:
    """Read a CSV file of ``image,caption`` rows (one per caption; ``image``: a path below ``images_root``).

    Without a ``split`` column, ``val_fraction`` and ``test_fraction`` of the images go to val and test (seeded).
    """
    path = Path(path)
    root = Path(images_root) if images_root is not None else path.parent / "images"
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not a column name
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; {FORMAT_HELP}.") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8 and try "
                           "again.") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "image" not in header or "caption" not in header:
            raise DatasetError(f"{path}: the first line must be a header naming the columns 'image' and 'caption' (and "
                               f"optionally 'split'); found {header or 'an empty file'}. Add the header line, e.g. "
                               "'image,caption'.")
        reader.fieldnames = header
        has_split = "split" in header
        first_line: dict[str, int] = {}  # image -> line of its first row, in order of appearance
        captions: dict[str, list[str]] = {}
        splits: dict[str, str] = {}
        problems: list[str] = []
        try:
            for row in reader:
                line = reader.line_num
                image = (row.get("image") or "").strip()
                caption = (row.get("caption") or "").strip()
                if not image:
                    problems.append(f"line {line}: empty 'image' field")
                    continue
                if not caption:
                    problems.append(f"line {line} ({image}): empty caption; write one or remove the row")
                    continue
                if has_split:
                    split = (row.get("split") or "").strip()
                    if split not in SPLITS:
                        problems.append(f"line {line} ({image}): split {split!r}; expected one of {', '.join(SPLITS)}")
                        continue
                    if splits.setdefault(image, split) != split:
                        problems.append(f"line {line} ({image}): split {split!r}, but an earlier row put this image in "
                                        f"{splits[image]!r}; an image belongs to one split")
                        continue
                first_line.setdefault(image, line)
                captions.setdefault(image, []).append(caption)
        except csv.Error as e:
            problems.append(f"line {reader.line_num}: {e}")
    if problems:
        _raise_problems(path, problems, f"Fix these rows in {path.name}.")
    if not first_line:
        raise DatasetError(f"{path}: no caption rows below the header.")
    names = list(first_line)
    if not has_split:
        splits = _random_splits(names, val_fraction, test_fraction, seed)
    records = [ImageRecord(i, n, root / n, splits[n], tuple(captions[n]), origin=f"line {first_line[n]} ({n})")
               for i, n in enumerate(names)]
    if check_files:
        _check_files_exist(path, records, root)
    return CaptionedImages(records, path)


def _random_splits(names: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must each lie in [0, 1) and "
                         "add up to less than 1")
    perm = np.random.default_rng(seed).permutation(len(names))
    n_val = int(round(val_fraction * len(names)))
    n_test = int(round(test_fraction * len(names)))
    return {names[i]: "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            for rank, i in enumerate(perm)}


def _check_files_exist(source: Path, records: list[ImageRecord], root: Path) -> None:
    if not root.is_dir():
        raise DatasetError(f"{source}: the image folder {root} does not exist. Put the images there "
                           f"(as images/<filepath>/<filename>); {FORMAT_HELP}.")
    missing = [f"{r.origin}: {r.path} is missing" for r in records if not r.path.is_file()]
    if missing:
        _raise_problems(source, missing, f"Put the missing images under {root}, or remove their entries from "
                                         f"{source.name}.")


# --------------------------------------------------------------------------- images
def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB, correctly.

    Transparent pixels go onto ``background`` (``convert("RGB")`` shows whatever colour they store, often black); 16-bit
    images are scaled to 8 bits (``convert`` would clip them to white).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if mode != "F":
            arr = arr / 257.0  # 0..65535 -> 0..255
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as 8-bit RGB, upright (EXIF orientation applied); a failure raises :class:`DatasetError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Palette images with transparency..."
            with Image.open(path) as im:
                im.load()
                upright = ImageOps.exif_transpose(im)
                return to_rgb(upright if upright is not None else im)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found; put it there or remove its entry from the dataset "
                           "file.") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: {e} If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS; otherwise remove "
                           "its entry.") from None
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not an image file Pillow can read; replace it with the real image or remove its "
                           "entry.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode the image ({e}); the file is truncated or corrupt. Download it "
                           "again, or remove its entry from the dataset file.") from None


class _ImageSource:
    """Loads the images of a split, optionally decoding each once and keeping it in memory."""

    AUTO_CACHE_MAX_IMAGES = 2000

    def __init__(self, data: CaptionedImages, cache: bool | None, progress: bool = False):
        self.paths = [r.path for r in data]
        self.cache = len(self.paths) <= self.AUTO_CACHE_MAX_IMAGES if cache is None else bool(cache)
        self.images: list[Image.Image] | None = None
        if self.cache:
            from tqdm.auto import tqdm
            # Decode now, in the main process: errors surface at once, and DataLoader workers share the decoded images.
            self.images = [load_image(p) for p in tqdm(self.paths, desc="decoding images", disable=not progress)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Image.Image:
        return self.images[i] if self.images is not None else load_image(self.paths[i])


class ImageTextDataset(torch.utils.data.Dataset):
    """(image, caption) pairs, one item per caption, for training.

    Images come from the split's files (kept decoded when ``cache_images``; default: up to 2,000 images) or from
    ``images``: pixels ``(N, 3, S, S)`` or a frozen tower's features ``(N, F)``. The ``transform`` sees each pair whole,
    to keep the caption true; after :meth:`set_epoch_seed` its draws depend on the epoch's seed and the caption alone
    (the image alone when grouped). ``negatives``: per caption, hard-negative captions, mirrored with it. ``units``:
    ``None`` (captions in order, for a shuffling loader) or groups of image numbers: each epoch, the groups in a seeded
    order, each image with all its captions, for a loader that does not shuffle.
    """

    def __init__(self, data: CaptionedImages, transform: Callable[[Any, str], tuple[Any, str]] | None = None,
                 cache_images: bool | None = None, progress: bool = False, *, images: Any = None,
                 negatives: Sequence[Sequence[str]] | None = None, units: Sequence[Sequence[int]] | None = None):
        if transform is not None and getattr(images, "ndim", None) == 2:
            raise ValueError("cached features (N, F) cannot be transformed like images; use transform=None")
        self.data, self.transform, self.negatives, self.units = data, transform, negatives, units
        self.images = images if images is not None else _ImageSource(data, cache_images, progress)
        self.captions, self.txt_to_img = data.captions, data.txt_to_img
        if negatives is not None and len(negatives) != len(self.captions):
            raise ValueError(f"{len(negatives)} lists of negatives; give one per caption ({len(self.captions)})")
        # In shared memory, so that workers kept alive across epochs see each new epoch's seed and order.
        self._epoch_seed = torch.full((), -1, dtype=torch.long).share_memory_()
        self._order = torch.arange(len(self.captions)).share_memory_()

    def set_epoch_seed(self, seed: int | None) -> None:
        """Derive each pair's random draws (and a grouped order) from ``seed`` (``None``: torch's running state)."""
        self._epoch_seed.fill_(-1 if seed is None else seed)
        if self.units is not None:  # the units in a seeded order, each image with its captions (stored image by image)
            shuffled = torch.randperm(len(self.units), generator=torch.Generator().manual_seed(max(seed or 0, 0)))
            first = np.cumsum([0, *np.bincount(self.txt_to_img, minlength=len(self.data))])
            self._order.copy_(torch.as_tensor(np.concatenate([np.arange(first[i], first[i + 1])
                                                               for k in shuffled.tolist() for i in self.units[k]])))

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, k: int) -> dict[str, Any]:
        j = int(self._order[k])
        i = int(self.txt_to_img[j])
        image, caption = self.images[i], self.captions[j]
        negatives = list(self.negatives[j]) if self.negatives is not None else []
        if self.transform is not None:
            seed = int(self._epoch_seed)
            seed = epoch_seed(seed, j if self.units is None else i) if seed >= 0 else None
            if seed is not None and isinstance(self.transform, CaptionAwareHorizontalFlip):  # the same draw, faster
                image, flipped = self.transform(image, caption, generator=torch.Generator().manual_seed(seed))
            else:
                with torch.random.fork_rng(devices=[], enabled=seed is not None):
                    if seed is not None:
                        torch.manual_seed(seed)
                    image, flipped = self.transform(image, caption)
            if flipped != caption:  # mirrored: the negatives' left and right swap with the caption's
                negatives = [swap_left_right(n) for n in negatives]
            caption = flipped
        return {"image": image, "caption": caption, "image_index": i, "caption_index": j, "negatives": negatives}


class ImageDataset(torch.utils.data.Dataset):
    """The images of a split, once each, in order: for encoding a gallery."""

    def __init__(self, data: CaptionedImages, transform: Callable[[Image.Image], Any] | None = None,
                 cache_images: bool | None = None, progress: bool = False):
        self.data, self.transform = data, transform
        self.images = _ImageSource(data, cache_images, progress)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "image_index": i}


# --------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """A collated batch; ``image_index`` tells which items show the same image (they are not each other's negatives)."""

    images: torch.Tensor  # (B, 3, H, W) float
    input_ids: torch.Tensor  # (B, T) long, T = longest caption in this batch
    attention_mask: torch.Tensor  # (B, T) long, 1 = real token, 0 = padding
    image_index: torch.Tensor  # (B,) long
    caption_index: torch.Tensor  # (B,) long
    captions: list[str]
    negative_ids: torch.Tensor | None = None  # (N, T') hard-negative captions, when the pairs carry them
    negative_mask: torch.Tensor | None = None  # (N, T')
    negative_owner: torch.Tensor | None = None  # (N,) the pair each negative was made from

    def __len__(self) -> int:
        return len(self.captions)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        tensors = ("images", "input_ids", "attention_mask", "image_index", "caption_index", "negative_ids",
                   "negative_mask", "negative_owner")
        return replace(self, **{k: fn(getattr(self, k)) for k in tensors if getattr(self, k) is not None})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True)
        return self._map(lambda t: t.pin_memory())


class Collator:
    """Collate items into a :class:`Batch`: captions padded to the batch's longest, cut at ``max_length`` tokens.

    Each caption's token ids are remembered (the last ``CACHE_SIZE`` captions at most: training sees each every epoch),
    giving what the tokenizer gives with ``padding="longest"``.
    """

    CACHE_SIZE = 500_000

    def __init__(self, tokenizer, max_length: int = 64):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.known: dict[str, torch.Tensor] = {}

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        new = list(dict.fromkeys(c for c in captions if c not in self.known))
        if len(self.known) + len(new) > self.CACHE_SIZE:
            self.known.clear()
        found = self.tokenizer(new, truncation=True, max_length=self.max_length)["input_ids"] if new else []
        self.known.update((c, torch.tensor(ids, dtype=torch.long)) for c, ids in zip(new, found))
        ids = [self.known[c] for c in captions]
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(row) for row in ids])
        return {"input_ids": input_ids, "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()}

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        captions = [it["caption"] for it in items]
        tokens = self.tokenize(captions)
        negatives = [(k, n) for k, it in enumerate(items) for n in it.get("negatives", ())]
        found = self.tokenize([n for _, n in negatives]) if negatives else {}
        extra = {"negative_ids": found["input_ids"], "negative_mask": found["attention_mask"],
                 "negative_owner": torch.tensor([k for k, _ in negatives], dtype=torch.long)} if negatives else {}
        return Batch(images=torch.stack([it["image"] for it in items]), input_ids=tokens["input_ids"],
                     attention_mask=tokens["attention_mask"],
                     image_index=torch.tensor([it["image_index"] for it in items], dtype=torch.long),
                     caption_index=torch.tensor([it["caption_index"] for it in items], dtype=torch.long),
                     captions=captions, **extra)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                collate_fn: Callable | None = None, num_workers: int = 0, drop_last: bool = False,
                pin_memory: bool = False, persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
    """A seeded DataLoader: the same ``seed`` gives the same batches, workers or not.

    ``persistent_workers`` (default: if there are workers) keeps them between passes; ``prefetch_factor``: batches per
    worker loaded ahead (``None``: torch's 2); ``sampler`` (e.g. distributed) replaces the shuffling.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 (load in the main process) or more, got {num_workers}")
    if num_workers > 0:
        # The fast tokenizer's own threads do not survive fork; keep it quiet and safe.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if prefetch_factor is not None and (not isinstance(prefetch_factor, int) or prefetch_factor < 1):
        raise ValueError(f"prefetch_factor must be a positive number of batches per worker, got {prefetch_factor!r}")
    generator = torch.Generator().manual_seed(seed)
    extra = {} if num_workers == 0 or prefetch_factor is None else {"prefetch_factor": prefetch_factor}
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler, collate_fn=collate_fn,
        num_workers=num_workers, worker_init_fn=seed_worker if num_workers > 0 else None, generator=generator,
        drop_last=drop_last, pin_memory=pin_memory,
        persistent_workers=num_workers > 0 if persistent_workers is None else (persistent_workers and num_workers > 0),
        **extra)
