"""``vlsearch index --engine ray`` on a real two-node Ray cluster: the index equals a local build.

One cluster serves the whole module (Ray starts slowly): ``tests/ray_cluster.py`` runs it in its own network
and PID namespace (``unshare``), with a head node and a worker node of one CPU each, and runs the indexing
commands there. Skipped when Ray is not installed or namespaces are not permitted; the test without Ray
always runs.
"""
from __future__ import annotations

import importlib.util
import json
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from helpers import CAPTIONS, TINY_CONFIG, make_image
from indexer import vectors
from indexer.index import Index, db_path
from indexer.pipeline import build_index
from indexer.store import Store
from retrieval.core.checkpoint import save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary

HELPER = Path(__file__).with_name("ray_cluster.py")
PORT = 6379  # inside the namespace: nothing else listens there
VLSEARCH = str(Path(sys.executable).with_name("vlsearch"))


def namespaces_permitted() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


class Cluster:
    """The helper process (PID 1 of the namespace) and its JSON-lines requests."""

    def __init__(self, log: Path):
        self.log = open(log, "w")
        self.proc = subprocess.Popen(["unshare", "-n", "-p", "-f", "--mount-proc", "--kill-child", sys.executable,
                                      str(HELPER), str(PORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.ready = self._answer(300)

    def _answer(self, timeout: float) -> dict[str, Any]:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            raise AssertionError(f"the Ray cluster helper did not answer; see {self.log.name}")
        return json.loads(line)

    def request(self, timeout: float = 300, **request: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def index(self, folder: Path, index_dir: Path, model: Path, *options: str, **request: Any) -> dict[str, Any]:
        return self.request(run=[VLSEARCH, "index", str(folder), "--index", str(index_dir), "--model", str(model),
                                 "--batch-size", "4", "--engine", "ray", "--ray-address", f"127.0.0.1:{PORT}",
                                 *options], **request)

    def close(self) -> None:
        self.proc.stdin.close()  # the helper ends, and with it (PID 1) every Ray process of the namespace
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if importlib.util.find_spec("ray") is None:
        pytest.skip('Ray is not installed (pip install -e ".[test]" installs it)')
    if not namespaces_permitted():
        pytest.skip("unshare -n -p is not permitted here (the test cluster needs its own network namespace)")
    cluster = Cluster(tmp_path_factory.mktemp("ray") / "cluster.log")
    try:
        yield cluster
    finally:
        cluster.close()


def write_folder(folder: Path, count: int) -> Path:
    """``count`` distinct images, a copy of one, and three files no decoder accepts."""
    for seed in range(count):
        make_image(folder / ("sub" if seed % 3 == 0 else "") / f"img{seed:03d}.jpg", seed)
    shutil.copy(folder / "img001.jpg", folder / "copy-of-img001.jpg")
    (folder / "truncated.jpg").write_bytes((folder / "img002.jpg").read_bytes()[:300])
    (folder / "text.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    return folder


def contents(index_dir: Path) -> dict[str, Any]:
    """Everything an index holds, with vectors by id; the saved FAISS file must match SQLite."""
    with Store.open(db_path(index_dir), readonly=True) as store:
        ids = store.ids_matching()
        saved = Index(index_dir, store).saved_vectors()
        assert saved is not None, "the saved FAISS file does not match SQLite"
        assert sorted(vectors.index_ids(saved).tolist()) == sorted(ids.tolist())
        rows = {row["id"]: (row["path"], row["hash"], row["width"], row["height"]) for row in store.rows(ids)}
        vector_ids, stored = store.vectors(ids)
        return {"rows": rows, "vectors": dict(zip(vector_ids.tolist(), stored)),
                "errors": sorted((e["path"], e["message"]) for e in store.errors())}


def assert_same_index(actual: Path, expected: Path) -> None:
    got, want = contents(actual), contents(expected)
    assert got["rows"] == want["rows"]  # same ids, paths, hashes and sizes
    assert got["errors"] == want["errors"]  # same files failed, for the same reasons
    for row_id, vector in want["vectors"].items():
        np.testing.assert_allclose(got["vectors"][row_id], vector, atol=1e-5)  # fp32 on both paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> tuple[Path, Path, str]:
    """A small folder and its local index (``--engine local``), and that run's summary line."""
    folder = write_folder(tmp_path_factory.mktemp("ray-photos") / "photos", 24)
    local = tmp_path_factory.mktemp("ray-local") / "index"
    summary = build_index(folder, local, model=tiny_model_path, batch_size=4)
    return folder, local, summary.line()


def counts(out: str) -> str:
    """The summary line's counts (the last line: Ray may print a note of its own, such as a node lost)."""
    return out.strip().splitlines()[-1].split(" in ")[0]


@pytest.fixture(scope="module")
def built(cluster: Cluster, folder: tuple[Path, Path, str], tiny_model_path: Path,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The folder indexed on the cluster: the index and the command's result."""
    index_dir = tmp_path_factory.mktemp("ray-built") / "index"
    return index_dir, cluster.index(folder[0], index_dir, tiny_model_path)


def test_a_two_node_cluster_builds_the_same_index_as_the_local_engine(
        cluster: Cluster, folder: tuple[Path, Path, str], built: tuple[Path, dict[str, Any]],
        tiny_model_path: Path) -> None:
    (photos, local, local_line), (index_dir, result) = folder, built
    assert result["rc"] == 0, result["err"]
    assert counts(result["out"]) == counts(local_line) == \
        "added 24, updated 0, removed 0, unchanged 0, reused 1, failed 3"
    assert result["out"].strip().endswith("on 2 nodes, 2 Ray actors")
    assert_same_index(index_dir, local)
    again = cluster.index(photos, index_dir, tiny_model_path)  # nothing to embed: Ray is not even used
    assert again["rc"] == 0 and counts(again["out"]) == "added 0, updated 0, removed 0, unchanged 25, reused 0, " \
        "failed 3", again["err"]


def test_bad_files_met_on_workers_are_recorded_with_the_local_reasons(
        folder: tuple[Path, Path, str], built: tuple[Path, dict[str, Any]]) -> None:
    (_, local, _), (index_dir, result) = folder, built
    assert result["rc"] == 0, result["err"]
    errors = dict(contents(index_dir)["errors"])
    assert errors == dict(contents(local)["errors"])
    assert set(errors) == {"truncated.jpg", "text.jpg", "empty.png"}
    assert errors["truncated.jpg"].startswith("corrupt or truncated image")
    assert errors["text.jpg"].startswith("not a supported image")
    for path in errors:  # and reported as warnings, as locally
        assert f"warning: {path}: " in result["err"]


def test_ship_bytes_builds_the_same_index(cluster: Cluster, folder: tuple[Path, Path, str], tiny_model_path: Path,
                                         tmp_path: Path) -> None:
    photos, local, local_line = folder
    result = cluster.index(photos, tmp_path / "index", tiny_model_path, "--ship-bytes")
    assert result["rc"] == 0, result["err"]
    assert counts(result["out"]) == counts(local_line)
    assert_same_index(tmp_path / "index", local)


def test_a_worker_node_killed_mid_run_leaves_a_complete_index(cluster: Cluster, tiny_model_path: Path,
                                                              tmp_path: Path) -> None:
    """Runs last: the worker node stays dead. Killed once a batch is committed and while its actor embeds one."""
    photos = write_folder(tmp_path / "photos", 160)
    build_index(photos, tmp_path / "local", model=tiny_model_path, batch_size=2)
    index_dir = tmp_path / "index"
    result = cluster.index(photos, index_dir, tiny_model_path, "--batch-size", "2",
                           kill_worker_when=str(db_path(index_dir)))
    assert result["killed"], "the run ended before the worker node could be killed"
    assert result["rc"] == 0, result["err"]
    assert counts(result["out"]) == "added 160, updated 0, removed 0, unchanged 0, reused 1, failed 3"
    assert_same_index(index_dir, tmp_path / "local")


def test_without_ray_the_engine_is_one_clear_error(image_folder: Path, tiny_model_path: Path) -> None:
    """Ray hidden from the import system, as when the extra is not installed."""
    script = ("import sys; sys.modules['ray'] = None; from retrieval.app.cli import main; "
              f"sys.argv = ['vlsearch', 'index', {str(image_folder)!r}, '--model', {str(tiny_model_path)!r}, "
              "'--engine', 'ray']; main()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error: --engine ray needs Ray, which is not installed; install it with: ' \
        'pip install "vlsearch[ray]"'
    assert not (image_folder / ".vlsearch").exists()  # nothing was touched


def test_a_model_with_a_fusion_head_gets_its_region_codes_from_the_workers(
        cluster: Cluster, folder: tuple[Path, Path, str], tmp_path: Path) -> None:
    """Re-ranking works on a cluster-built index: the actors send each new vector's region codes back."""
    torch.manual_seed(3)
    fused = tmp_path / "fused.pt"
    save_checkpoint(DualEncoder(ModelConfig(**TINY_CONFIG, fusion_dim=8), Vocabulary.build(CAPTIONS),
                                pretrained=False), fused)
    photos = folder[0]
    local = build_index(photos, tmp_path / "local", model=fused, batch_size=4)
    result = cluster.index(photos, tmp_path / "ray", fused)
    assert result["rc"] == 0, result["err"]
    assert counts(result["out"]) == local.line().split(" in ")[0]
    regions = {}
    for name in ("local", "ray"):
        with Store.open(db_path(tmp_path / name), readonly=True) as store:
            ids = store.ids_matching()
            assert store.region_count() == len(ids) > 0  # every indexed image has its region codes
            regions[name] = {row["path"]: np.frombuffer(store.regions([row["id"]])[row["id"]], np.int8)
                             for row in store.rows(ids)}
    assert regions["ray"].keys() == regions["local"].keys()
    for path, codes in regions["local"].items():  # the same floats, quantised: equal up to one rounding step
        assert np.abs(regions["ray"][path].astype(int) - codes.astype(int)).max() <= 1, path
