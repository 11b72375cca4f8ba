"""EmbeddingIndex: exact search equals brute force, the torch fallback equals FAISS, IVF recall is measured, files
round-trip atomically, and every bad input gets a clear error."""

import sys

import numpy as np
import pytest
import torch

from siamese_utils.chapters.scaling.index import EmbeddingIndex, faiss_available
from siamese_utils.core.models import MissingDependencyError


def unit(n, dim, seed):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(gallery, queries, k):
    scores, ids = torch.topk(torch.from_numpy(queries) @ torch.from_numpy(gallery).T, k, dim=1)
    return scores.numpy(), ids.numpy()


@pytest.fixture(scope="module")
def data():
    return unit(3000, 64, 0), unit(40, 64, 1)


@pytest.fixture
def no_faiss(monkeypatch):
    """Make `faiss` unimportable, as on a machine without faiss-cpu."""
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert not faiss_available()


# -------------------------------------------------------------------------------- exact search


def test_faiss_flat_equals_brute_force(data):
    pytest.importorskip("faiss")
    gallery, queries = data
    index = EmbeddingIndex(64, batch_size=16)  # 40 queries in three batches
    assert index.backend == "faiss"
    index.add(gallery[:1000]).add(torch.from_numpy(gallery[1000:]))  # ids continue across calls, torch or NumPy
    assert len(index) == 3000
    scores, ids = index.search(queries, k=10)
    ref_scores, ref_ids = brute_force(gallery, queries, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_torch_fallback_equals_brute_force_and_faiss(data):
    gallery, queries = data
    # blocks of 700 do not divide the chunks added (1234 + 1766): the merge crosses block and chunk edges
    index = EmbeddingIndex(64, backend="torch", batch_size=16, block_size=700)
    index.add(gallery[:1234]).add(gallery[1234:])
    scores, ids = index.search(queries, k=25)
    ref_scores, ref_ids = brute_force(gallery, queries, 25)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    if faiss_available():
        faiss_scores, faiss_ids = EmbeddingIndex(64, backend="faiss").add(gallery).search(queries, k=25)
        np.testing.assert_array_equal(ids, faiss_ids)
        np.testing.assert_allclose(scores, faiss_scores, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_result_types_single_queries_and_k_equal_to_size(backend, data):
    if backend == "faiss":
        pytest.importorskip("faiss")
    gallery, queries = unit(30, 64, 2), data[1]
    index = EmbeddingIndex(64, backend=backend).add(gallery)
    scores, ids = index.search(torch.from_numpy(queries), k=3)
    assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
    assert scores.shape == ids.shape == (40, 3) and ids.dtype == torch.int64
    one_scores, one_ids = index.search(queries[5], k=3)  # one (dim,) vector -> (k,) results
    assert one_scores.shape == one_ids.shape == (3,) and isinstance(one_ids, np.ndarray)
    np.testing.assert_array_equal(one_ids, ids[5].numpy())
    all_scores, all_ids = index.search(queries[:2], k=30)
    assert sorted(all_ids[0].tolist()) == list(range(30))
    assert (np.diff(all_scores, axis=1) <= 0).all()  # best first


def test_without_faiss_the_torch_fallback_is_used(no_faiss, data):
    gallery, queries = data
    index = EmbeddingIndex(64).add(gallery)
    assert index.backend == "torch"
    np.testing.assert_array_equal(index.search(queries, 5)[1], brute_force(gallery, queries, 5)[1])


def test_without_faiss_approximate_search_names_the_pip_command(no_faiss):
    for make in (lambda: EmbeddingIndex(64, "ivf"), lambda: EmbeddingIndex(64, backend="faiss")):
        with pytest.raises(MissingDependencyError, match=r"pip install faiss-cpu"):
            make()


# -------------------------------------------------------------------------------- approximate search


@pytest.fixture(scope="module")
def ivf():
    pytest.importorskip("faiss")
    gallery, queries = unit(8000, 32, 3), unit(100, 32, 4)
    return EmbeddingIndex(32, "ivf", nlist=40, nprobe=2).add(gallery), gallery, queries


def test_ivf_recall_is_measured_against_exact_search(ivf):
    index, gallery, queries = ivf
    assert index.nlist == 40 and index.is_trained
    _, truth = brute_force(gallery, queries, 10)
    recalls = {}
    for nprobe in (1, 4, 40):
        _, found = index.search(queries, 10, nprobe=nprobe)
        by_hand = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
        recalls[nprobe] = index.recall(queries, 10, nprobe=nprobe)
        assert recalls[nprobe] == pytest.approx(by_hand)
    assert recalls[40] == 1.0  # every list scanned: exact
    assert recalls[1] < recalls[4] < 1.0  # random vectors have no clusters: one list misses much
    assert index.recall(queries, 10) == index.recall(queries, 10, nprobe=2)  # the index's own nprobe
    assert recalls[1] < index.recall(queries, 10) < recalls[4]
    reference = EmbeddingIndex(32, backend="torch").add(gallery)
    assert index.recall(queries, 10, reference=reference, nprobe=4) == recalls[4]
    assert index.recall(queries, 10, reference=torch.from_numpy(truth), nprobe=4) == recalls[4]  # ids searched once


def test_ivf_default_nlist_and_missing_results(ivf):
    pytest.importorskip("faiss")
    gallery = unit(2000, 16, 5)
    index = EmbeddingIndex(16, "ivf").add(gallery)
    assert index.nlist == EmbeddingIndex.default_nlist(2000) == min(round(4 * 2000 ** 0.5), 2000 // 39)
    scores, ids = index.search(gallery[:3], k=2000, nprobe=1)  # one list holds far fewer than 2000
    assert (ids == -1).any() and np.isneginf(scores[ids == -1]).all() and np.isfinite(scores[ids >= 0]).all()
    assert len(set(ids[0][ids[0] >= 0].tolist())) == (ids[0] >= 0).sum()


# -------------------------------------------------------------------------------- files


@pytest.mark.parametrize("kind,backend", [("flat", "faiss"), ("ivf", "faiss"), ("flat", "torch")])
def test_save_load_round_trip(tmp_path, kind, backend, data):
    if backend == "faiss":
        pytest.importorskip("faiss")
    gallery, queries = data
    index = EmbeddingIndex(64, kind, backend=backend, nlist=20, nprobe=3).add(gallery)
    path = index.save(tmp_path / "gallery.index")
    loaded = EmbeddingIndex.load(path)
    assert (loaded.kind, loaded.backend, len(loaded), loaded.nprobe if kind == "ivf" else 3) == \
        (kind, backend, 3000, 3)
    for got, want in zip(loaded.search(queries, 7), index.search(queries, 7)):
        np.testing.assert_array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.index"]  # no temporary file left


def test_memory_bytes_matches_the_file_faiss_writes(tmp_path, data):
    pytest.importorskip("faiss")
    gallery = data[0]
    for kind in ("flat", "ivf"):
        index = EmbeddingIndex(64, kind, nlist=20).add(gallery)
        size = index.save(tmp_path / kind).stat().st_size
        assert 0 <= size - index.memory_bytes < 1024, (kind, size, index.memory_bytes)  # a small header apart


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, data):
    faiss = pytest.importorskip("faiss")
    path = EmbeddingIndex(64).add(data[0][:10]).save(tmp_path / "g.index")
    before = path.read_bytes()

    def crash(index, name):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        EmbeddingIndex(64).add(data[0]).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["g.index"]
    with pytest.raises(ValueError, match="not trained"):
        EmbeddingIndex(64, "ivf").save(path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        EmbeddingIndex(64).save(tmp_path / "missing" / "g.index")


def test_bad_files_name_the_file(tmp_path, data):
    faiss = pytest.importorskip("faiss")
    garbage = tmp_path / "garbage.index"
    garbage.write_bytes(b"this is not an index")
    with pytest.raises(ValueError, match=r"garbage\.index: not a FAISS index"):
        EmbeddingIndex.load(garbage)
    truncated = EmbeddingIndex(64).add(data[0]).save(tmp_path / "cut.index")
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut\.index: not a FAISS index file, or a truncated one"):
        EmbeddingIndex.load(truncated)
    l2 = tmp_path / "l2.index"
    faiss.write_index(faiss.IndexFlatL2(64), str(l2))
    with pytest.raises(ValueError, match=r"l2\.index: a FAISS index with another metric"):
        EmbeddingIndex.load(l2)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"other\.pt: not an embedding index"):
        EmbeddingIndex.load(other)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.index: no such index file"):
        EmbeddingIndex.load(tmp_path / "nowhere.index")


def test_loading_a_faiss_file_without_faiss_names_the_pip_command(tmp_path, data, monkeypatch):
    pytest.importorskip("faiss")
    path = EmbeddingIndex(64).add(data[0][:10]).save(tmp_path / "g.index")
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingDependencyError, match=r"g\.index.*pip install faiss-cpu"):
        EmbeddingIndex.load(path)


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_bad_input_is_named(backend, data):
    if backend == "faiss":
        pytest.importorskip("faiss")
    gallery, queries = data
    index = EmbeddingIndex(64, backend=backend)
    with pytest.raises(ValueError, match="the index is empty: add"):
        index.search(queries, 1)
    with pytest.raises(ValueError, match="have 32 dimensions but the index holds 64-dimensional"):
        index.add(gallery[:, :32])
    index.add(gallery[:50])
    with pytest.raises(ValueError, match="queries have 63 dimensions"):
        index.search(queries[:, :63], 1)
    for k in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=rf"k={k!r}: ask for a positive"):
            index.search(queries, k)
    with pytest.raises(ValueError, match="k=51 but the index holds 50 vectors: ask for at most k=50"):
        index.search(queries, 51)
    bad = gallery[:5].copy()
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match=r"1 of the 5 vectors to add contain NaN or infinity \(first: row 3\)"):
        index.add(bad)
    bad[3, 7] = np.inf
    with pytest.raises(ValueError, match=r"1 of the 5 queries contain NaN or infinity"):
        index.search(bad, 1)
    assert len(index) == 50  # nothing was added by the failed calls
    with pytest.raises(ValueError, match=r"shape \(2, 3, 64\)"):
        index.search(np.zeros((2, 3, 64), np.float32), 1)
    with pytest.raises(TypeError, match="not str"):
        index.add("vectors")


def test_bad_settings_are_named():
    for kwargs, message in [({"kind": "hnsw"}, "kind='hnsw'"), ({"backend": "gpu"}, "backend='gpu'"),
                            ({"nprobe": 0}, "nprobe=0"), ({"nlist": -1}, "nlist=-1"),
                            ({"kind": "ivf", "backend": "torch"}, "needs FAISS")]:
        with pytest.raises(ValueError, match=message):
            EmbeddingIndex(8, **kwargs)
    with pytest.raises(ValueError, match="dim=0"):
        EmbeddingIndex(0)


def test_ivf_with_fewer_training_vectors_than_lists():
    pytest.importorskip("faiss")
    index = EmbeddingIndex(8, "ivf", nlist=100)
    with pytest.raises(ValueError, match=r"nlist=100 lists needs at least 100 training vectors.*got 50.*nlist=1\)"):
        index.add(unit(50, 8, 6))
    assert not index.is_trained and len(index) == 0
    index.train(unit(4000, 8, 7))
    with pytest.raises(ValueError, match="already trained"):
        index.train(unit(4000, 8, 7))


def test_recall_needs_an_exact_reference_of_the_same_vectors(ivf):
    index, gallery, queries = ivf
    with pytest.raises(ValueError, match="reference must be an exact index"):
        index.recall(queries, reference=index)
    with pytest.raises(ValueError, match="reference holds 10 vectors"):
        index.recall(queries, reference=EmbeddingIndex(32).add(gallery[:10]))
    with pytest.raises(ValueError, match=r"reference ids have shape \(100, 5\).*at least k=10"):
        index.recall(queries, 10, reference=np.zeros((100, 5), np.int64))
