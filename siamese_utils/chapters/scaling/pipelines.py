"""Image pipelines for sets too large to decode into memory: a uint8 cache on disk, or decoding as they are used.

``"memory"`` (chapter 03's :func:`~siamese_utils.core.train.prepare_images`)
decodes every image once into RAM as float tensors; ``"disk"``
(:func:`build_image_cache`, :class:`DiskImages`) decodes once into a uint8
memory-mapped file read back per batch; ``"stream"`` (:class:`StreamedImages`)
decodes in the loader's workers every time. All three give the same pixels, bit
for bit, so the choice is a :class:`~siamese_utils.core.train.Runtime`
setting: it changes speed and memory, never what a run learns.

Explained in ``notebooks/09_scaling_up.ipynb``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.data import CaptionedImages, DatasetError, load_image, make_loader
from ...core.runtime import atomic_write
from ...core.train import Runtime, prepare_images
from ...core.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["IMAGE_PIPELINES", "default_cache_dir", "resize_to_uint8", "normalize_uint8", "StreamedImages",
           "DiskImages", "build_image_cache", "load_split_images"]

IMAGE_PIPELINES = {
    "memory": "decode and resize every image once, keep them all in RAM as float tensors (small datasets)",
    "disk": "decode and resize once into a uint8 cache file, read back per batch (memory-mapped)",
    "stream": "decode and resize every image again each time it is used (no cache; any dataset size)",
}
CACHE_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """Where :func:`build_image_cache` keeps its files: ``$SIAMESE_CACHE_DIR``, else ``~/.cache/siamese_utils``.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    root = os.environ.get("SIAMESE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "siamese_utils"


def resize_to_uint8(image: Image.Image, image_size: int) -> np.ndarray:
    """An RGB image resized to ``image_size`` x ``image_size``, as a ``(3, S, S)`` uint8 array.

    The resize is the evaluation pipeline's own (``torchvision`` ``Resize``
    with antialiasing), so that :func:`normalize_uint8` of the result equals,
    bit for bit, what ``build_image_transform(..., train=False)`` returns.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    from torchvision import transforms as T

    resized = T.Resize((image_size, image_size), antialias=True)(image)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def normalize_uint8(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(..., 3, S, S)`` uint8 pixels -> float32 tensor scaled to [0, 1] and ImageNet-normalised.

    The same operations, in the same order, as ``ToTensor`` then ``Normalize``.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    from torchvision.transforms import functional as TF

    # A copy: the pixels may be a read-only memory map of the cache file.
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).to(torch.float32).div(255)
    return TF.normalize(t, list(IMAGENET_MEAN), list(IMAGENET_STD))


class _PixelArray:
    """Indexable like an ``(N, 3, S, S)`` float tensor: an int gives one image, a slice a stacked batch."""

    ndim = 4

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, i):
        if isinstance(i, slice):
            images = [self.image(k) for k in range(*i.indices(len(self)))]
            return torch.stack(images) if images else torch.empty(0, 3, self.image_size, self.image_size)
        return self.image(int(i))


class StreamedImages(_PixelArray):
    """The images of a split, decoded and resized again at every access: ``images[i]`` is ``(3, S, S)``.

    Nothing is held in memory, so any dataset fits; the price is decoding each
    image once per epoch, which DataLoader workers do in parallel. Equal, bit
    for bit, to the ``"memory"`` and ``"disk"`` pipelines.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    def __init__(self, data: CaptionedImages, image_size: int):
        self.paths = [r.path for r in data]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> torch.Tensor:
        return normalize_uint8(resize_to_uint8(load_image(self.paths[i]), self.image_size))


class DiskImages(_PixelArray):
    """The images of a split read from a uint8 cache file written by :func:`build_image_cache`.

    The file is memory-mapped (opened lazily in each process, so DataLoader
    workers share the operating system's page cache instead of copies);
    ``images[i]`` is the normalised ``(3, S, S)`` float tensor.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    def __init__(self, path: str | os.PathLike, num_images: int, image_size: int):
        self.path = Path(path)
        self.num_images, self.image_size = num_images, image_size
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The whole cache, ``(N, 3, S, S)`` uint8, memory-mapped read-only."""
        if self._array is None:
            self._array = _open_cache(self.path, (self.num_images, 3, self.image_size, self.image_size))
            if self._array is None:
                raise DatasetError(f"{self.path}: the image cache is missing or damaged; delete it and train again "
                                   "to rebuild it")
        return self._array

    def __getstate__(self):  # workers reopen the file rather than receive a copy of it
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return self.num_images

    def image(self, i: int) -> torch.Tensor:
        return normalize_uint8(self.array[i])

    def __getitem__(self, i):
        if isinstance(i, slice):  # one read and one normalisation for a whole batch
            return normalize_uint8(self.array[i])
        return self.image(int(i))


def _open_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.uint8 or array.shape != shape:
        return None
    return array


def _cache_key(data: CaptionedImages, image_size: int) -> str:
    """What the cached pixels depend on: the dataset file, the split, the size and every image file's state."""
    files = []
    for r in data:
        try:
            st = r.path.stat()
            files.append([r.name, st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([r.name, None, None])
    doc = {"format": CACHE_FORMAT_VERSION, "source": str(data.source.resolve()), "split": data.name,
           "image_size": image_size, "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class _ResizedImages(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], image_size: int):
        self.paths, self.image_size = paths, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return resize_to_uint8(load_image(self.paths[i]), self.image_size)


def build_image_cache(data: CaptionedImages, image_size: int, cache_dir: str | os.PathLike | None = None,
                      num_workers: int = 0, progress: bool = False) -> DiskImages:
    """Decode and resize the images of ``data`` once into a uint8 ``.npy`` file; reuse it while it is current.

    The file lives in ``cache_dir`` (default :func:`default_cache_dir`) under a
    name made of the dataset folder, the split, the size and a hash of what
    the pixels depend on: the dataset file's location, the split, the image
    size and every image's name, size and modification time. A later run
    with the same images reuses it; when any of these change, the cache is
    rebuilt and the stale file of that dataset, split and size removed. It is
    written to a temporary file and renamed when complete, so a build that is
    interrupted is never taken for a finished one. ``num_workers`` processes
    decode in parallel. A corrupt image raises :class:`DatasetError` naming it.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create the image cache folder {cache_dir} ({e.strerror or e}); "
                           "choose another cache folder") from None
    source = data.source.resolve()
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.parent.name) or "dataset"
    prefix = f"{slug}-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}-{data.name}-{image_size}px-"
    final = cache_dir / f"{prefix}{_cache_key(data, image_size)[:20]}.npy"
    shape = (len(data), 3, image_size, image_size)
    if _open_cache(final, shape) is not None:
        return DiskImages(final, len(data), image_size)

    from tqdm.auto import tqdm

    def write(tmp: Path) -> None:  # only a complete file ever carries the final name
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if len(data):
            loader = make_loader(_ResizedImages([r.path for r in data], image_size), 64, shuffle=False,
                                 collate_fn=np.stack, num_workers=num_workers, persistent_workers=False)
            start = 0
            batches = iter(loader)  # tqdm.auto would call iter() twice, starting a second set of workers
            error = None
            try:
                for batch in tqdm(batches, total=len(loader), desc=f"caching {data.name} images",
                                  disable=not progress, leave=False):
                    array[start:start + len(batch)] = batch
                    start += len(batch)
            except Exception as e:  # a corrupt image: its DatasetError names the file, its traceback adds nothing
                error = e.with_traceback(None)  # and would keep the loader, and its workers, alive
            finally:
                del batches  # the last reference: its workers stop now
            if error is not None:
                raise error
        array.flush()

    atomic_write(final, write)
    for stale in cache_dir.glob(f"{prefix}*.npy"):
        if stale != final:
            stale.unlink(missing_ok=True)
    return DiskImages(final, len(data), image_size)


def load_split_images(split: CaptionedImages, image_size: int, runtime: Runtime,
                      cache_dir: str | os.PathLike | None = None, progress: bool = False):
    """The images of ``split`` as ``runtime.images`` asks: an ``(N, 3, S, S)`` tensor or a lazy equivalent.

    ``"memory"``: :func:`~siamese_utils.core.train.prepare_images`; ``"disk"``:
    a :class:`DiskImages` over the cache that :func:`build_image_cache` keeps
    in ``cache_dir`` (built with ``runtime.num_workers`` processes);
    ``"stream"``: a :class:`StreamedImages`. Indexing any of them gives the
    same normalised pixels.

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    if runtime.images == "disk":
        return build_image_cache(split, image_size, cache_dir, num_workers=runtime.num_workers, progress=progress)
    if runtime.images == "stream":
        return StreamedImages(split, image_size)
    return prepare_images(split, image_size, progress)
