"""Per-example stages on 2 Ray workers give one process's numbers; a killed worker and a resumed run lose nothing.

A local Ray runtime is started by the module fixture (2 CPUs, 2 actors of one
thread each) and shut down at the end.
"""
import json

import numpy as np
import pytest

import tfgeom
from tfgeom.errors import InputError
from tfgeom.execution.executor import LocalExecutor, ShardStore

ray = pytest.importorskip("ray")

from tfgeom.execution.ray import RayExecutor  # noqa: E402


def rel(a, b):
    """Max relative difference of two arrays (infinities must agree)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isinf(a), np.isinf(b)) and np.array_equal(np.isnan(a), np.isnan(b))
    fin = np.isfinite(a)
    if not fin.any():
        return 0.0
    return float(np.abs(a[fin] - b[fin]).max() / max(np.abs(a[fin]).max(), 1e-30))


@pytest.fixture(scope="module")
def runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def gm(small_cnn):
    return tfgeom.GeometryModel(small_cnn, batch_size=8)  # shards of 8: several per worker on a few inputs


@pytest.fixture(scope="module")
def executor(runtime, gm):
    ex = RayExecutor(workers=2)
    yield ex
    ex.close()


def test_deepfool_both_norms_equal_one_process(gm, digits, executor):
    x = digits.x[:48]
    for norm in ("l2", "linf"):
        one = gm.deepfool(x, norm=norm)
        seen = []
        two = gm.deepfool(x, norm=norm, executor=executor, progress=lambda d, t: seen.append((d, t)))
        assert executor.workers == 2
        assert rel(one.x_adv, two.x_adv) <= 1e-5 and rel(one.norms, two.norms) <= 1e-5
        assert np.array_equal(one.success, two.success) and np.array_equal(one.adv_labels, two.adv_labels)
        assert rel(one.boundary_points[one.success], two.boundary_points[two.success]) <= 1e-5
        assert seen[-1] == (48, 48) and len(seen) == 6  # progress counts examples over both workers, per shard


def test_curvature_sections_connect_equal_one_process(gm, digits, executor):
    x = digits.x[:24]
    attack = gm.deepfool(x)
    one = gm.principal_curvatures(x, k=5, attack=attack)
    two = gm.principal_curvatures(x, k=5, attack=attack, executor=executor)
    assert np.array_equal(one.index, two.index) and len(one.index) > 16
    assert rel(one.values, two.values) <= 1e-5 and rel(one.directions, two.directions) <= 1e-5
    for direction in ("curved", "random"):
        s1 = gm.boundary_sections(x[:16], direction=direction, resolution=9, attack=attack.rows(slice(0, 16)))
        s2 = gm.boundary_sections(x[:16], direction=direction, resolution=9, attack=attack.rows(slice(0, 16)),
                                  executor=executor)
        assert len(s1) == len(s2) > 8
        assert max(rel(a.margin, b.margin) for a, b in zip(s1, s2)) <= 1e-5
        assert all(np.array_equal(a.labels, b.labels) for a, b in zip(s1, s2))
    labels = gm.predict(digits.x[:60])
    pairs = [(i, j) for i in range(60) for j in range(i + 1, 60) if labels[i] == labels[j]][:16]
    a, b = digits.x[[p[0] for p in pairs]], digits.x[[p[1] for p in pairs]]
    p1, p2 = gm.connect(a, b, max_anchors=4), gm.connect(a, b, max_anchors=4, executor=executor)
    assert np.array_equal(p1.connected, p2.connected) and np.array_equal(p1.num_anchors, p2.num_anchors)
    assert p1.resolution == p2.resolution and rel(p1.min_margin, p2.min_margin) <= 1e-5


def test_detection_certification_hull_features_equal_one_process(gm, digits, executor):
    from tfgeom.geometry.attacks import by_name
    from tfgeom.geometry.detection import CurvatureDetector

    x = digits.x[:32]
    d1, d2 = CurvatureDetector(gm, directions=8), CurvatureDetector(gm, directions=8, executor=executor)
    s1, s2 = d1.curvatures(x), d2.curvatures(x)
    assert np.array_equal(s1.labels, s2.labels) and np.array_equal(s1.candidates, s2.candidates)
    assert rel(s1.rho, s2.rho) <= 1e-5
    f1, f2 = by_name("fgsm")(gm, x), by_name("fgsm")(gm, x, executor=executor)
    assert rel(f1.x_adv, f2.x_adv) <= 1e-5 and np.array_equal(f1.success, f2.success)
    c1, c2 = gm.certify(x[:16], 0.02), gm.certify(x[:16], 0.02, executor=executor)
    assert np.array_equal(c1.certified, c2.certified) and rel(c1.margins, c2.margins) <= 1e-5
    r1, r2 = gm.certified_radius(x[:16], method="ibp"), gm.certified_radius(x[:16], method="ibp", executor=executor)
    assert rel(r1.radius, r2.radius) <= 1e-5 and np.array_equal(r1.converged, r2.converged)
    z1, z2 = gm.features(x), gm.features(x, executor=executor)
    assert rel(z1, z2) <= 1e-5
    fs = gm.feature_space(digits.x_train[:300], digits.y_train[:300])
    h1, h2 = fs.hull_distance(z1), fs.hull_distance(z1, executor=executor)
    assert rel(h1.distance, h2.distance) <= 1e-5


def test_curved_subspace_products_summed_over_workers(gm, digits, executor):
    """The averaged operator's products are summed per shard on the workers; the Lanczos result matches one
    process's up to float32 summation order."""
    x = digits.x[:32]
    attack = gm.deepfool(x)
    one = gm.curved_subspace(x, dim=5, attack=attack)
    two = gm.curved_subspace(x, dim=5, attack=attack, executor=executor)
    assert one.points == two.points == int(attack.success.sum())
    np.testing.assert_allclose(two.values, one.values, rtol=1e-3, atol=1e-4 * np.abs(one.values).max())
    cosines = np.abs(np.sum(one.basis * two.basis, axis=1))
    assert cosines[:3].min() > 0.99  # the most curved directions agree


def test_killed_worker_mid_deepfool_still_completes(gm, digits, executor):
    x = digits.x[:64]
    one = gm.deepfool(x)
    executor.start(gm)
    before = ray.get(executor.actors[0].pid.remote())
    killed = []

    def kill_once(done, total):
        if not killed and done < total:  # after the first finished shard, with others in flight
            ray.kill(executor.actors[0], no_restart=False)
            killed.append(done)

    two = gm.deepfool(x, executor=executor, progress=kill_once)
    after = ray.get(executor.actors[0].pid.remote())
    assert killed and before != after  # the actor really died and Ray restarted it
    assert rel(one.x_adv, two.x_adv) <= 1e-5 and np.array_equal(one.success, two.success)


def test_resumed_run_recomputes_no_finished_shard(gm, digits, tmp_path, executor, monkeypatch):
    from tfgeom.runtime.data import Dataset
    from tfgeom.report.runner import run_analyses

    dataset = Dataset(digits.x[:64], digits.y[:64], None, None, "digits")
    out = tmp_path / "report"

    class Stop(Exception):
        pass

    def interrupt(description, done, total):
        if description == "DeepFool linf" and done >= 24:
            raise Stop  # the driver dies after three of eight L-inf shards

    monkeypatch.setattr(executor, "shard_size", 8)
    start = executor.computed
    with pytest.raises(Stop):
        run_analyses(gm, dataset, out, only=["deepfool"], executor=executor, progress=interrupt)
    finished = sorted(p.name for p in (out / "shards").glob("*.npz"))
    assert executor.computed - start == len(finished) >= 8 + 3  # all L2 shards, at least three L-inf ones
    start = executor.computed
    report = run_analyses(gm, dataset, out, only=["deepfool"], executor=executor, resume=True)
    assert executor.computed - start == 16 - len(finished)  # only the shards the first run had not finished
    reference = run_analyses(gm, dataset, tmp_path / "one", only=["deepfool"])
    assert report["sections"]["deepfool"]["summary"] == reference["sections"]["deepfool"]["summary"]
    assert json.loads((out / "report.json").read_text())["sections"]["deepfool"]["status"] == "done"


def test_local_executor_store_reads_shards_back(gm, digits, tmp_path):
    x = digits.x[:40]
    store = ShardStore(tmp_path / "shards")
    first = LocalExecutor(shard_size=8, store=store)
    a = gm.deepfool(x, executor=first)
    again = LocalExecutor(shard_size=8, store=store)
    b = gm.deepfool(x, executor=again)
    assert first.computed == 5 and again.computed == 0 and store.written == 5
    assert np.array_equal(a.x_adv, b.x_adv)
    changed = LocalExecutor(shard_size=8, store=store)
    gm.deepfool(x, executor=changed, overshoot=0.05)  # other parameters: other shards
    assert changed.computed == 5


def test_second_run_on_a_folder_is_refused(gm, digits, tmp_path):
    from tfgeom.runtime.data import Dataset
    from tfgeom.execution.lock import folder_lock
    from tfgeom.report.runner import run_analyses

    dataset = Dataset(digits.x[:8], digits.y[:8], None, None, "digits")
    with folder_lock(tmp_path):
        with pytest.raises(InputError, match="in use by another tfgeom run"):
            run_analyses(gm, dataset, tmp_path, only=["deepfool"])
    run_analyses(gm, dataset, tmp_path, only=["deepfool"])  # released: the next run goes ahead


def test_workers_without_ray_says_how_to_install(monkeypatch):
    import sys

    from tfgeom.execution.ray import INSTALL_HINT, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(InputError, match="pip install"):
        import_ray()
    assert "tfgeom[ray]" in INSTALL_HINT
