"""Search galleries too big for one score matrix: exact and approximate nearest neighbours with FAISS.

:class:`~siamese_utils.core.search.Gallery` scores a query against every item with
one matrix product, and :func:`~siamese_utils.core.metrics.retrieval_metrics` builds
the whole ``(Q, N)`` score matrix. Both are right for a test split; neither is
for a gallery of millions of images, where the score matrix alone of 10,000
queries against 1,000,000 items takes 40 GB. :class:`EmbeddingIndex` keeps only
the ``k`` best items of each query:

- ``kind="flat"`` (default): exact search, FAISS's ``IndexFlatIP`` (every
  vector scored, the best ``k`` kept in a heap); without FAISS, the same
  result from a pure-torch loop over blocks of the gallery, memory-bounded;
- ``kind="ivf"``: approximate search, FAISS's ``IndexIVFFlat``. k-means splits
  the gallery into ``nlist`` lists; a query scans only the ``nprobe`` lists
  whose centroids score highest, so it costs about ``nprobe / nlist`` of the
  exact search and may miss neighbours that fell into other lists.
  :meth:`EmbeddingIndex.recall` measures what it misses.

Embeddings are L2-normalised float32 vectors, so the inner product is the
cosine similarity, the score :class:`~siamese_utils.core.search.Gallery` uses.
Between items with exactly equal scores the order is not specified.

Explained in ``notebooks/09_scaling_up.ipynb``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ...core.models import MissingDependencyError
from ...core.runtime import atomic_write

__all__ = ["EmbeddingIndex", "faiss_available"]

FAISS_PIP = "faiss-cpu"
MIN_POINTS_PER_LIST = 39  # FAISS's k-means warns below 39 training points per centroid
_TORCH_MAGIC = b"PK"  # torch.save writes a zip archive


def faiss_available() -> bool:
    """Whether the ``faiss`` package can be imported (``pip install faiss-cpu``).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """
    return importlib.util.find_spec("faiss") is not None


def _faiss(what: str):
    if not faiss_available():
        raise MissingDependencyError(
            f"{what} needs the package {FAISS_PIP!r}, which is not installed. Install it with "
            f'`python -m pip install {FAISS_PIP}` (or `python -m pip install -e ".[faiss]"`), '
            'or use the exact search without it: EmbeddingIndex(dim, kind="flat", backend="torch").'
        )
    import faiss

    return faiss


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r}: give a positive whole number")
    return int(value)


def _as_matrix(vectors: Any, dim: int, what: str) -> tuple[np.ndarray, bool]:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` array; also whether a single vector was given."""
    if isinstance(vectors, torch.Tensor):
        array = vectors.detach().to("cpu", torch.float32).numpy()
    elif isinstance(vectors, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be numbers: a (n, {dim}) NumPy array or torch tensor") from None
    else:
        raise TypeError(f"{what} must be a (n, {dim}) NumPy array or torch tensor, not {type(vectors).__name__}")
    single = array.ndim == 1
    if single:
        array = array[None]
    if array.ndim != 2:
        raise ValueError(f"{what} have shape {tuple(array.shape)}: give a (n, {dim}) matrix, one vector per row")
    if array.shape[1] != dim:
        raise ValueError(f"{what} have {array.shape[1]} dimensions but the index holds {dim}-dimensional vectors: "
                         "encode them with the model (embed_dim) that encoded the gallery")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{len(bad)} of the {len(array)} {what} contain NaN or infinity (first: row {bad[0]}); "
                         "check the encoder's output (a diverged model?) before indexing or searching")
    return np.ascontiguousarray(array), single


class EmbeddingIndex:
    """The ``k`` nearest gallery vectors of each query by inner product, without a ``(Q, N)`` score matrix.

    - ``dim``: size of the vectors (a model's ``embed_dim``);
    - ``kind``: ``"flat"`` (exact) or ``"ivf"`` (approximate, FAISS only);
    - ``nlist``: IVF lists, chosen when the index is trained if ``None``:
      ``4 * sqrt(n)`` for ``n`` training vectors (FAISS's guideline is 4 to 16
      times the square root), at most ``n / 39`` so that k-means gets the 39
      points per list FAISS asks for; ``nprobe``: lists scanned per query;
    - ``backend``: ``"faiss"``, ``"torch"`` (exact only: blocks of
      ``block_size`` gallery vectors scored at a time, so at most
      ``batch_size * block_size`` scores are held) or ``"auto"`` (FAISS when
      installed);
    - ``batch_size``: queries searched per call to the backend.

    :meth:`add` appends vectors (an untrained IVF index is first trained on
    them), :meth:`search` returns ``(scores, ids)``, best first, ids counting
    from 0 in the order added. :meth:`save` and :meth:`load` write and read it
    (FAISS's own file format; a torch file for the torch backend).

    Explained in ``notebooks/09_scaling_up.ipynb``.
    """

    def __init__(self, dim: int, kind: Literal["flat", "ivf"] = "flat", *, nlist: int | None = None,
                 nprobe: int = 8, backend: Literal["auto", "faiss", "torch"] = "auto", batch_size: int = 1024,
                 block_size: int = 16384):
        self.dim = _positive_int("dim", dim)
        if kind not in ("flat", "ivf"):
            raise ValueError(f"kind={kind!r}; use 'flat' (exact search) or 'ivf' (approximate, with FAISS)")
        if backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"backend={backend!r}; use 'auto', 'faiss' or 'torch'")
        if nlist is not None:
            _positive_int("nlist", nlist)
        self.kind = kind
        self._nlist = nlist
        self.nprobe = _positive_int("nprobe", nprobe)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.block_size = _positive_int("block_size", block_size)
        if backend == "torch" and kind != "flat":
            raise ValueError(f"the torch backend searches exactly (kind='flat'); kind={kind!r} needs FAISS "
                             "(backend='faiss' or 'auto')")
        if backend == "auto":
            backend = "faiss" if (faiss_available() or kind != "flat") else "torch"
        if backend == "faiss":
            _faiss("An IVF index (approximate search)" if kind == "ivf" else "The FAISS backend")
        self.backend = backend
        self._index = None  # the FAISS index (built here for flat, when trained for IVF)
        self._blocks: list[torch.Tensor] = []  # the torch backend's vectors, as added
        if backend == "faiss" and kind == "flat":
            self._index = _faiss("The FAISS backend").IndexFlatIP(self.dim)

    # -- size -------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.backend == "torch":
            return sum(len(b) for b in self._blocks)
        return 0 if self._index is None else int(self._index.ntotal)

    def __repr__(self) -> str:
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind == "ivf" else ""
        return f"EmbeddingIndex(dim={self.dim}, kind={self.kind!r}, backend={self.backend!r}, size={len(self)}{extra})"

    @property
    def nlist(self) -> int | None:
        """Number of IVF lists (``None`` for a flat index, or an IVF index not trained yet with ``nlist=None``)."""
        return self._nlist if self.kind == "ivf" else None

    @property
    def is_trained(self) -> bool:
        """A flat index needs no training; an IVF index is trained by :meth:`train` or its first :meth:`add`."""
        return self.kind == "flat" or self._index is not None

    @property
    def memory_bytes(self) -> int:
        """Bytes the index holds: 4 per vector component, plus for IVF an 8-byte id per vector and the centroids."""
        vectors = 4 * len(self) * self.dim
        if self.kind == "flat":
            return vectors
        centroids = 4 * (self._nlist or 0) * self.dim
        return vectors + 8 * len(self) + centroids

    # -- building ---------------------------------------------------------------------------
    @staticmethod
    def default_nlist(num_train: int) -> int:
        """The IVF lists chosen for ``num_train`` training vectors: ``4 * sqrt(n)``, at most ``n / 39``, at least 1.

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        return max(1, min(round(4 * math.sqrt(num_train)), num_train // MIN_POINTS_PER_LIST))

    def train(self, vectors: Any) -> EmbeddingIndex:
        """Run the IVF index's k-means on ``vectors`` (a sample of the gallery is enough); a flat index needs none.

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        data, _ = _as_matrix(vectors, self.dim, "training vectors")
        if self.kind == "flat":
            return self
        if self._index is not None:
            raise ValueError("this IVF index is already trained; build a new EmbeddingIndex to train it again")
        nlist = self._nlist if self._nlist is not None else self.default_nlist(len(data))
        if len(data) < nlist:
            raise ValueError(f"an IVF index with nlist={nlist} lists needs at least {nlist} training vectors "
                             f"(FAISS asks for {MIN_POINTS_PER_LIST * nlist}), got {len(data)}: train on more "
                             f"vectors, or pass a smaller nlist (for example nlist={self.default_nlist(len(data))})")
        faiss = _faiss("An IVF index (approximate search)")
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # k-means' own default seed, set here so that a build repeats
        index.train(data)
        index.nprobe = self.nprobe
        self._index, self._quantizer, self._nlist = index, quantizer, nlist
        return self

    def add(self, vectors: Any) -> EmbeddingIndex:
        """Append ``vectors`` ``(n, dim)`` (NumPy or torch); they get ids ``len(self)`` to ``len(self) + n - 1``.

        An IVF index not yet trained is first trained on these vectors.

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        data, _ = _as_matrix(vectors, self.dim, "vectors to add")
        if len(data) == 0:
            return self
        if self.backend == "torch":
            self._blocks.append(torch.from_numpy(data.copy()))
            return self
        if not self.is_trained:
            self.train(data)
        self._index.add(data)
        return self

    # -- searching --------------------------------------------------------------------------
    def _check_k(self, k: Any) -> int:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k={k!r}: ask for a positive whole number of neighbours (k >= 1)")
        if len(self) == 0:
            raise ValueError("the index is empty: add the gallery's vectors (index.add(img_emb)) before searching")
        if k > len(self):
            raise ValueError(f"k={k} but the index holds {len(self)} vectors: ask for at most k={len(self)}")
        return int(k)

    def _search_torch(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(queries)
        best_scores = torch.full((len(q), 0), -math.inf)
        best_ids = torch.zeros((len(q), 0), dtype=torch.long)
        offset = 0
        for block in self._blocks:
            for start in range(0, len(block), self.block_size):
                scores = q @ block[start:start + self.block_size].T  # (batch, <= block_size): the memory bound
                values, ids = scores.topk(min(k, scores.shape[1]), dim=1)
                best_scores = torch.cat([best_scores, values], dim=1)
                best_ids = torch.cat([best_ids, ids + (offset + start)], dim=1)
                if best_scores.shape[1] > k:  # keep the k best of the running list and this block's
                    best_scores, keep = best_scores.topk(k, dim=1)
                    best_ids = best_ids.gather(1, keep)
            offset += len(block)
        # topk returns its k in descending order; after the merges re-sort once to be sure
        best_scores, order = best_scores.sort(dim=1, descending=True, stable=True)
        return best_scores.numpy(), best_ids.gather(1, order).numpy()

    def search(self, queries: Any, k: int = 10, *, nprobe: int | None = None):
        """The ``k`` best gallery vectors of each query: ``(scores, ids)``, each ``(Q, k)``, best first.

        ``queries`` is ``(Q, dim)`` or one ``(dim,)`` vector (then both results
        are ``(k,)``), NumPy or torch; results come back as the same kind
        (torch tensors on the CPU for torch queries). ``nprobe`` overrides the
        IVF index's for this call. An IVF search that finds fewer than ``k``
        vectors in the lists it scans fills the rest with id ``-1`` and score
        ``-inf``.

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        as_torch = isinstance(queries, torch.Tensor)
        data, single = _as_matrix(queries, self.dim, "queries")
        k = self._check_k(k)
        if nprobe is not None:
            nprobe = _positive_int("nprobe", nprobe)
        scores = np.empty((len(data), k), dtype=np.float32)
        ids = np.empty((len(data), k), dtype=np.int64)
        if self.kind == "ivf":
            self._index.nprobe = nprobe if nprobe is not None else self.nprobe
        for start in range(0, len(data), self.batch_size):
            chunk = data[start:start + self.batch_size]
            if self.backend == "torch":
                s, i = self._search_torch(chunk, k)
            else:
                s, i = self._index.search(chunk, k)
            scores[start:start + len(chunk)], ids[start:start + len(chunk)] = s, i
        scores[ids < 0] = -np.inf  # FAISS marks a missing result with id -1 and the lowest float
        if single:
            scores, ids = scores[0], ids[0]
        if as_torch:
            return torch.from_numpy(scores), torch.from_numpy(ids)
        return scores, ids

    def vectors(self) -> np.ndarray:
        """A copy of every vector in the index, ``(len(self), dim)``, in id order (for exact reference searches).

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        if self.backend == "torch":
            return torch.cat(self._blocks).numpy() if self._blocks else np.empty((0, self.dim), np.float32)
        if len(self) == 0:
            return np.empty((0, self.dim), np.float32)
        if self.kind == "ivf":
            self._index.make_direct_map()  # IVF stores vectors by list; the map finds each id's row
        return self._index.reconstruct_n(0, len(self))

    def recall(self, queries: Any, k: int = 10, *, reference: EmbeddingIndex | Any | None = None,
               nprobe: int | None = None) -> float:
        """Recall@k of this index against exact search: the share of each query's true ``k`` nearest it returns.

        The average over ``queries`` of ``|approximate top-k & exact top-k| / k``
        (1.0 for a flat index). ``reference`` is an exact (flat) index over the
        same vectors in the same order, or the ids ``(Q, >= k)`` such an index
        returned for these queries (to search it only once when comparing
        several settings); without it, an exact index is built from this
        index's vectors. ``nprobe`` overrides the IVF index's for this call.

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        queries, _ = _as_matrix(queries, self.dim, "queries")
        k = self._check_k(k)
        if reference is None:
            reference = EmbeddingIndex(self.dim, "flat", backend=self.backend, batch_size=self.batch_size)
            reference.add(self.vectors())
        if isinstance(reference, EmbeddingIndex):
            if reference.kind != "flat":
                raise ValueError(f"reference must be an exact index (kind='flat'), not kind={reference.kind!r}")
            if len(reference) != len(self) or reference.dim != self.dim:
                raise ValueError(f"reference holds {len(reference)} vectors of {reference.dim} dimensions, this "
                                 f"index {len(self)} of {self.dim}: build the reference from the same vectors")
            truth = reference.search(queries, k)[1]
        else:
            truth = np.asarray(reference.numpy() if isinstance(reference, torch.Tensor) else reference)
            if truth.ndim != 2 or len(truth) != len(queries) or truth.shape[1] < k:
                raise ValueError(f"reference ids have shape {truth.shape}: give the exact search's ids for these "
                                 f"{len(queries)} queries, at least k={k} per query")
            truth = truth[:, :k]
        _, found = self.search(queries, k, nprobe=nprobe)
        hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth)]
        return float(np.mean(hits) / k)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` atomically (a temporary file, then a rename): a failed save keeps the old file.

        FAISS indexes are written with ``faiss.write_index``; the torch
        backend's vectors with ``torch.save``. IVF's ``nprobe`` is stored with it.

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path.parent}: no such folder to save the index in; create it first")
        if not self.is_trained:
            raise ValueError("this IVF index is not trained yet: add vectors (or train it) before saving")
        def write(tmp: Path) -> None:
            if self.backend == "torch":
                torch.save({"format": "siamese-image-text embedding index", "dim": self.dim,
                            "vectors": torch.from_numpy(self.vectors())}, tmp)
            else:
                faiss = _faiss("Saving a FAISS index")
                if self.kind == "ivf":
                    self._index.nprobe = self.nprobe
                faiss.write_index(self._index, str(tmp))

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, batch_size: int = 1024, block_size: int = 16384) -> EmbeddingIndex:
        """Read an index written by :meth:`save` (or any FAISS ``IndexFlatIP`` / ``IndexIVFFlat`` inner-product file).

        Explained in ``notebooks/09_scaling_up.ipynb``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such index file; check the path (indexes are written by "
                                    "EmbeddingIndex.save)")
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == _TORCH_MAGIC:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                vectors = state["vectors"]
                dim = int(state["dim"])
            except Exception as e:  # noqa: BLE001 -- any unreadable content is reported the same way
                raise ValueError(f"{path}: not an embedding index this version can read ({type(e).__name__}: {e}); "
                                 "save the index again with EmbeddingIndex.save") from None
            index = cls(dim, "flat", backend="torch", batch_size=batch_size, block_size=block_size)
            return index.add(vectors)
        faiss = _faiss(f"Reading the FAISS index {path}")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}: not a FAISS index file, or a truncated one ({first}); "
                             "save the index again with EmbeddingIndex.save") from None
        if raw.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: a FAISS index with another metric (metric_type={raw.metric_type}); "
                             "this class searches by inner product: build it with EmbeddingIndex")
        kind = {"IndexFlatIP": "flat", "IndexIVFFlat": "ivf"}.get(type(raw).__name__)
        if kind is None:
            raise ValueError(f"{path}: a FAISS {type(raw).__name__}; this class reads IndexFlatIP and IndexIVFFlat")
        if kind == "flat":
            index = cls(raw.d, "flat", backend="faiss", batch_size=batch_size, block_size=block_size)
        else:
            index = cls(raw.d, "ivf", nlist=raw.nlist, nprobe=max(1, raw.nprobe), backend="faiss",
                        batch_size=batch_size, block_size=block_size)
        index._index = raw
        return index
