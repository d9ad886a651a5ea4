"""indexer.vectors: index-type choice (pure), build/add/remove/search with SQLite ids, atomic save/load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import vectors
from retrieval.core.errors import ConfigError

DIM = 16
TYPES = ["Flat", "HNSW32,Flat", "IVF8,Flat", "IVF8,SQ8"]  # every kind choose_index_type returns


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(1000, 1400, dtype=np.int64), unit_vectors(400)  # ids deliberately not 0..N-1


def test_choose_index_type_is_a_pure_function_of_size() -> None:
    assert vectors.choose_index_type(0, 512) == "Flat"
    assert vectors.choose_index_type(vectors.FLAT_LIMIT, 256) == "Flat"
    assert vectors.choose_index_type(vectors.FLAT_LIMIT + 1, 256) == "HNSW32,Flat"
    assert vectors.choose_index_type(vectors.FLAT_LIMIT, 512) == "HNSW32,Flat"  # twice the dims: half the vectors
    assert vectors.choose_index_type(1_000_000, 512) == "HNSW32,Flat"  # 2 GB of vectors + graph < 4 GB
    assert vectors.choose_index_type(1_000_000, 512, memory_budget=2_100_000_000) == "IVF4000,Flat"
    assert vectors.choose_index_type(10_000_000, 512) == "IVF12649,SQ8"  # 20 GB of floats do not fit
    assert vectors.ivf_lists(100) == 2 and vectors.ivf_lists(10) == 1
    assert [vectors.ivf_nprobe(n) for n in (8, 1264, 4000)] == [8, 16, 31]  # every list of a small index


def test_resolve_index_type_aliases_and_factory_strings() -> None:
    assert vectors.resolve_index_type("auto", 10, DIM) == "Flat"
    assert vectors.resolve_index_type("FLAT", 10, DIM) == "Flat"
    assert vectors.resolve_index_type("hnsw", 10, DIM) == "HNSW32,Flat"
    assert vectors.resolve_index_type("ivf", 10_000, DIM) == "IVF256,Flat"
    assert vectors.resolve_index_type("IVF16,SQ8", 10, DIM) == "IVF16,SQ8"
    with pytest.raises(ConfigError, match="--index-type 'bogus'"):
        vectors.resolve_index_type("bogus", 10, DIM)


@pytest.mark.parametrize("factory", TYPES)
def test_ids_are_the_given_ids_and_each_vector_finds_itself(factory: str, data) -> None:
    ids, x = data
    index = vectors.build(factory, DIM, ids, x)
    assert sorted(vectors.index_ids(index).tolist()) == ids.tolist()
    scores, found = vectors.search(index, x[:5], 3)
    assert found[:, 0].tolist() == ids[:5].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.02 if "SQ8" in factory else 1e-5)  # 8-bit: close


@pytest.mark.parametrize("factory", TYPES)
def test_search_restricted_to_ids_is_exact(factory: str, data) -> None:  # exact over the stored codes for SQ8
    ids, x = data
    index = vectors.build(factory, DIM, ids, x)
    chosen = ids[::37]  # 11 scattered ids: a selective filter
    scores, found = vectors.search(index, x[:4], 5, ids=np.append(chosen, 99_999))  # unknown ids are ignored
    sims = x[:4] @ x[::37].T
    expected = chosen[np.argsort(-sims, axis=1)[:, :5]]
    assert found.tolist() == expected.tolist()
    tolerance = 0.01 if "SQ8" in factory else 1e-5
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :5], atol=tolerance)


def test_remove_where_supported_and_report_where_not(data) -> None:
    ids, x = data
    for factory in ("Flat", "IVF8,Flat"):
        index = vectors.build(factory, DIM, ids, x)
        assert vectors.remove(index, [1000, 1001, 5])
        assert index.ntotal == 398 and 1000 not in vectors.index_ids(index)
    hnsw = vectors.build("HNSW32,Flat", DIM, ids, x)
    assert not vectors.remove(hnsw, [1000]) and hnsw.ntotal == 400  # caller rebuilds instead


def test_add_after_build_and_empty_searches() -> None:
    index = vectors.build("Flat", DIM)
    scores, found = vectors.search(index, unit_vectors(2), 10)
    assert scores.shape == found.shape == (2, 0)
    vectors.add(index, [7, 9], unit_vectors(2, seed=5))
    assert vectors.search(index, unit_vectors(2, seed=5), 10)[1].tolist() == [[7, 9], [9, 7]]
    assert vectors.search(index, unit_vectors(1), 3, ids=[])[1].shape == (1, 0)


def test_training_needs_enough_vectors() -> None:
    with pytest.raises(ConfigError, match="needs at least 64 vectors"):
        vectors.build("IVF64,Flat", DIM, np.arange(10), unit_vectors(10))


@pytest.mark.parametrize("factory", TYPES)
def test_save_is_atomic_and_load_keeps_ids_and_search_parameters(factory: str, data, tmp_path: Path) -> None:
    ids, x = data
    index = vectors.build(factory, DIM, ids, x)
    path = tmp_path / "vectors.3.faiss"
    vectors.save(index, path)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.3.faiss"]  # no temp file left behind
    loaded = vectors.load(path)
    for a, b in zip(vectors.search(index, x[:3], 4), vectors.search(loaded, x[:3], 4)):
        np.testing.assert_array_equal(a, b)
    if factory.startswith("HNSW"):
        import faiss

        assert faiss.downcast_index(loaded.index).hnsw.efSearch == vectors.HNSW_EF_SEARCH
    if factory.startswith("IVF"):
        assert loaded.nprobe > 1


def test_load_of_a_bad_file_is_an_index_store_error(tmp_path: Path) -> None:
    from retrieval.core.errors import IndexStoreError

    (tmp_path / "broken.faiss").write_bytes(b"not faiss")
    with pytest.raises(IndexStoreError, match="unreadable FAISS index"):
        vectors.load(tmp_path / "broken.faiss")


def test_save_failure_is_an_index_store_error(tmp_path: Path) -> None:
    from retrieval.core.errors import IndexStoreError

    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(IndexStoreError, match="cannot save the FAISS index"):
        vectors.save(vectors.build("Flat", DIM), tmp_path / "a-file" / "vectors.1.faiss")
