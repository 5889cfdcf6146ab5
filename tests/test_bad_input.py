"""Careless and hostile input: nothing executes from an output folder, nothing is mixed on resume, exact
certificates stay sound, and bad input gets one line (exit 2), not a traceback or a hang."""
import json
import os
import pickle
import time

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

import tfgeom
from tfgeom.cli.main import app
from tfgeom.errors import InputError, ModelError, TfgeomError
from tfgeom.execution import LocalExecutor
from tfgeom.execution.lock import file_lock
from tfgeom.execution.store import ShardStore

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error:"), result.output
    for word in words:
        assert word in result.output, result.output


class _Evil:
    """A pickle that creates a file when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# -- security and mixed data --------------------------------------------------------


def test_resumed_shards_are_never_unpickled(small_cnn, digits, tmp_path):
    """A shard replaced by a pickle (or an .npz holding Python objects) is refused in one line; its code never runs."""
    gm = tfgeom.GeometryModel(small_cnn)
    store = ShardStore(tmp_path / "shards")
    gm.deepfool(digits.x[:16], executor=LocalExecutor(shard_size=8, store=store))
    shards = sorted((tmp_path / "shards").glob("*.npz"))
    assert len(shards) == 2 and not list((tmp_path / "shards").glob("*.pkl"))
    marker = tmp_path / "pwned"
    shards[0].write_bytes(pickle.dumps(_Evil(marker)))
    np.save(open(shards[1], "wb"), np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    for _ in range(2):
        with pytest.raises(InputError, match="not a result file tfgeom wrote.*remove that file and rerun with --resume"):
            gm.deepfool(digits.x[:16], executor=LocalExecutor(shard_size=8, store=store))
        shards[0], shards[1] = shards[1], shards[0]
        shards[0].unlink(missing_ok=True)
    assert not marker.exists()


def test_resume_refuses_data_rewritten_in_place(small_cnn_path, digits, tmp_path):
    """Rewriting the data file with other inputs makes `--resume` refuse (naming the data digest), for analyze and
    certify alike, instead of keeping the old results."""
    data = tmp_path / "data.npz"
    np.savez(data, x=digits.x[:6], y=digits.y[:6])
    out = tmp_path / "report"
    assert _run("analyze", small_cnn_path, "--data", data, "--out", out, "--only", "deepfool", "--no-split").exit_code == 0
    log = tmp_path / "certify.jsonl"
    assert _run("certify", small_cnn_path, "--data", data, "--out", log, "--method", "ibp").exit_code == 0
    np.savez(data, x=digits.x[6:12], y=digits.y[6:12])
    _one_line_error(_run("analyze", small_cnn_path, "--data", data, "--out", out, "--only", "deepfool", "--no-split",
                         "--resume"), "data_sha256")
    _one_line_error(_run("certify", small_cnn_path, "--data", data, "--out", log, "--method", "ibp", "--resume"),
                    "data_sha256")


def test_a_second_certify_on_one_out_is_refused(small_cnn_path, digits_npz, tmp_path):
    """While one run holds `--out`, another `certify` on it exits 2 naming the holder, and writes nothing."""
    log = tmp_path / "certify.jsonl"
    with file_lock(log):
        result = _run("certify", small_cnn_path, "--data", digits_npz, "--out", log, "--method", "ibp", "--limit", 3)
    _one_line_error(result, "being written by another tfgeom run", f"pid {os.getpid()}")
    assert not log.exists()


def test_empty_only_is_refused_and_keeps_the_report(small_cnn_path, digits_npz, tmp_path):
    """`--only ""` or `--only ,,` names no analysis: exit 2, and a finished report.json is left as it was."""
    out = tmp_path / "report"
    assert _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--only", "deepfool",
                "--limit", 6).exit_code == 0
    before = (out / "report.json").read_text()
    for only in ("", ",,"):
        _one_line_error(_run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--only", only), "--only")
    assert (out / "report.json").read_text() == before


def test_a_claim_without_an_interval_is_printed():
    """A claim with a value but too few examples for a bootstrap interval prints without one (no TypeError)."""
    from tfgeom.report.runner import interval_text

    assert interval_text({"value": 0.5, "low": None, "high": None}) == "0.5 [no interval]"
    assert interval_text({"value": 0.5, "low": 0.25, "high": 0.75}) == "0.5 [0.25, 0.75]"
    assert interval_text({"value": None}) == "-"


def test_corrupt_resume_files_get_one_line(small_cnn_path, digits_npz, tmp_path):
    """A report.json that is JSON but not a report, and certify logs with a bad header, binary content or records
    missing fields: one line naming the file and the fix."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text("[1, 2, 3]")
    _one_line_error(_run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--only", "deepfool",
                         "--limit", 4, "--resume"), "report.json", "without --resume")
    log = tmp_path / "certify.jsonl"
    args = ("certify", small_cnn_path, "--data", digits_npz, "--out", log, "--method", "ibp", "--limit", 3)
    assert _run(*args).exit_code == 0
    header = log.read_text().splitlines()[0]
    for content in ('{"not": "a header"}\n', b"\x89PNG\r\n\x1a\n\xff\xfe", header + '\n{"index": 0}\n',
                    header + '\n[1, 2]\n{"index": 1, "certified": true}\n'):
        log.write_bytes(content if isinstance(content, bytes) else content.encode())
        _one_line_error(_run(*args, "--resume"), str(log), "without --resume")


def test_user_text_with_markup_is_printed_as_is(small_cnn_path, digits_npz):
    """Brackets in user text (a --set key, a TOML hint) neither raise rich's MarkupError nor vanish."""
    _one_line_error(_run("analyze", small_cnn_path, "--data", digits_npz, "--set", "curvature.x[/x]=1"), "[/x]")
    _one_line_error(_run("analyze", small_cnn_path, "--data", digits_npz, "--set", "nonsense"), "curvature.points")


def test_bad_settings_and_outputs_fail_before_any_work(small_cnn_path, digits_npz, tmp_path):
    """An out-of-range rate, a count of zero and an --out in a missing folder are refused before the model runs."""
    _one_line_error(_run("analyze", small_cnn_path, "--data", digits_npz, "--set", "detection.fpr=5"), "detection.fpr")
    _one_line_error(_run("analyze", small_cnn_path, "--data", digits_npz, "--set", "curvature.points=0"),
                    "curvature.points must be at least 1")
    start = time.perf_counter()
    _one_line_error(_run("deepfool", small_cnn_path, "--data", digits_npz, "--out", tmp_path / "missing" / "adv.npz"),
                    "does not exist")
    assert not (tmp_path / "missing").exists() and time.perf_counter() - start < 30


def test_an_import_that_exits_is_an_error(small_cnn_path, tmp_path):
    """`--import` of a file that calls sys.exit(0) is reported, not a silent exit 0."""
    module = tmp_path / "exits.py"
    module.write_text("import sys\nsys.exit(0)\n")
    _one_line_error(_run("--import", module, "info", small_cnn_path), "sys.exit(0)")


def test_report_html_embeds_only_files_inside_its_folder(small_cnn_path, digits_npz, tmp_path):
    """A report.json edited to name a figure outside the folder does not get that file into report.html."""
    import base64

    from tfgeom.report.runner import render_html

    out = tmp_path / "report"
    assert _run("analyze", small_cnn_path, "--data", digits_npz, "--out", out, "--only", "deepfool",
                "--limit", 4).exit_code == 0
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-BYTES")
    report = json.loads((out / "report.json").read_text())
    report["sections"]["deepfool"]["figures"][0]["file"] = "../secret.png"
    page = render_html(report, out)
    assert "outside the report folder" in page
    assert base64.b64encode(b"SECRET-BYTES").decode() not in page


def test_unreachable_ray_address_fails_within_seconds(small_cnn_path, digits_npz):
    """`--ray-address` where nothing listens: one line within 30 s, not minutes of retries."""
    pytest.importorskip("ray")
    start = time.perf_counter()
    result = _run("deepfool", small_cnn_path, "--data", digits_npz, "--limit", 4, "--ray-address", "127.0.0.1:1")
    _one_line_error(result, "no Ray cluster answers at 127.0.0.1:1")
    assert time.perf_counter() - start < 30


def test_more_workers_than_cores_are_capped(monkeypatch):
    """`--workers 1000` on a small machine asks Ray for the machine's cores, with a note."""
    pytest.importorskip("ray")
    from tfgeom.cli.loading import make_executor

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert make_executor(1000, None).requested == 2


def test_unreadable_images_are_named(tmp_path):
    """A folder with a text file named .png (or an empty image) names the file; a zero image size is refused."""
    from tfgeom.runtime import data

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        keras.utils.save_img(tmp_path / cls / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b" / "broken.png").write_text("not an image")
    with pytest.raises(InputError, match="broken.png"):
        data.load(str(tmp_path), image_size=(8, 8))
    (tmp_path / "b" / "broken.png").write_bytes(b"")
    with pytest.raises(InputError, match="broken.png"):
        data.load(str(tmp_path), image_size=(8, 8))
    (tmp_path / "b" / "broken.png").unlink()
    for size in ((0, 0), (-3, 8)):
        with pytest.raises(InputError, match="two positive integers"):
            data.load(str(tmp_path), image_size=size)
    assert data.load(str(tmp_path), image_size=(8, 8)).x.shape == (2, 8, 8, 3)


def test_analyze_on_one_class_or_identical_inputs_finishes(small_cnn_path, digits, tmp_path):
    """Three examples of one class, and four copies of one input: every section finishes or says why it is
    skipped; the run exits 0 with a report."""
    same = np.flatnonzero(digits.y == digits.y[0])[:3]
    for name, x, y in (("one_class", digits.x[same], digits.y[same]),
                       ("identical", np.repeat(digits.x[:1], 4, 0), np.repeat(digits.y[:1], 4))):
        data = tmp_path / f"{name}.npz"
        np.savez(data, x=x, y=y)
        out = tmp_path / name
        result = _run("analyze", small_cnn_path, "--data", data, "--out", out,
                      "--only", "deepfool,connectivity,feature_space", "--set", "feature_space.max_train=10")
        assert result.exit_code == 0, result.output
        assert (out / "report.html").exists()


def test_deepfool_reaches_the_boundary_of_tiny_logits(digits):
    """DeepFool is scale invariant: logits of scale 1e-12 give the same perturbations as the unscaled model's."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
    x = digits.x[:20]
    reference = tfgeom.GeometryModel(model).deepfool(x)
    w, b = model.layers[-1].get_weights()
    model.layers[-1].set_weights([w * 1e-12, b * 1e-12])
    tiny = tfgeom.GeometryModel(model).deepfool(x)
    assert tiny.success.all() and reference.success.all()
    np.testing.assert_allclose(tiny.norms, reference.norms, rtol=1e-4)


# -- exact certificates --------------------------------------------------------------------


def _segment_net(seed=1008, shape=(8, 8, 1)):
    """The issue's reproduction: a small conv net trained 4 epochs, and 8 segments of Linf length ~0.1."""
    from keras import layers as L

    keras.utils.set_random_seed(seed)
    i = keras.Input(shape)
    h = L.ReLU()(L.Conv2D(4, 3)(i))
    h = L.ReLU()(L.Conv2D(4, 3)(h))
    model = keras.Model(i, L.Dense(3)(L.ReLU()(L.Dense(8)(L.Flatten()(h)))))
    r = np.random.default_rng(seed)
    t = np.clip(r.uniform(.3, .7, shape) + r.normal(0, .25, (3, *shape)), 0, 1)
    y = r.integers(0, 3, 1200)
    x = np.clip(t[y] + r.normal(0, .22, (1200, *shape)), 0, 1).astype("float32")
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1000], y[:1000], epochs=4, batch_size=50, verbose=0)
    xa = x[1000:][np.random.default_rng(seed + 7).choice(200, 8, replace=False)]
    xb = np.clip(xa + np.random.default_rng(seed + 3).choice([-1., 1.], xa.shape) * 0.099758, 0, 1).astype("float32")
    return model, xa, xb


def _sampled_min_margins(model, xa, xb, cls, points=4001):
    """`[N, L]` the smallest margin f_c - f_j at `points` evenly spaced points of each segment (an upper bound)."""
    t = np.linspace(0, 1, points, dtype=np.float32)[:, None, None, None]
    out = []
    for a, b, c in zip(xa, xb, cls):
        z = model.predict(a + t * (b - a), verbose=0, batch_size=1024)
        out.append((z[:, c:c + 1] - z).min(axis=0))
    return np.array(out)


def test_segment_milp_is_exact_against_dense_sampling():
    """The segment MILP of the issue's network equals the smallest margin found by sampling each segment densely
    (never above it, within 1e-3 of it), is never below CROWN's bound, and does not depend on the batch."""
    model, xa, xb = _segment_net()
    gm = tfgeom.GeometryModel(model)
    milp = gm.certify_segment(xa, xb, method="milp")
    crown = gm.certify_segment(xa, xb, method="crown")
    sampled = _sampled_min_margins(model, xa, xb, milp.cls)
    exact, found = milp.margins.copy(), sampled.copy()
    for i, c in enumerate(milp.cls):
        exact[i, c] = found[i, c] = np.inf
    finite = np.isfinite(found)
    assert np.all(exact[finite] <= found[finite] + 1e-4), np.max(exact[finite] - found[finite])
    assert np.all(exact[finite] >= found[finite] - 1e-3)  # the sampled minimum is near the exact one on a segment
    assert np.all(exact[finite] >= crown.margins[finite] - 1e-4)
    alone = gm.certify_segment(xa[2:3], xb[2:3], method="milp")  # batched bounds used to give another optimum
    np.testing.assert_allclose(alone.margins[0], milp.margins[2], atol=1e-4)


def test_milp_on_sets_of_one_point_equals_the_margin():
    """An eps = 0 ball and a segment from x to x are single points: the MILP returns their margins, never -inf."""
    model, xa, _ = _segment_net()
    gm = tfgeom.GeometryModel(model)
    logits = gm.logits(xa)
    cls = logits.argmax(1)
    margins = logits[np.arange(len(xa)), cls][:, None] - logits
    margins[np.arange(len(xa)), cls] = np.inf
    for cert in (gm.certify(xa, 0.0, method="milp"), gm.certify_segment(xa, xa, method="milp")):
        assert np.all(np.isfinite(cert.min_margin))
        np.testing.assert_allclose(cert.margins, margins, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_small_networks_certificates_hold_at_attacks_and_samples(seed):
    """On random small ReLU networks (dense and conv, max-pooling), no certified ball contains a PGD or sampled
    counterexample, for IBP, CROWN, alpha-CROWN, branch and bound and the MILP, and MILP >= CROWN >= IBP."""
    from keras import layers as L

    from tfgeom.geometry import attacks

    keras.utils.set_random_seed(seed)
    r = np.random.default_rng(seed)
    i = keras.Input((6, 6, 1))
    h = L.Conv2D(3, 3, activation="relu")(i) if seed % 2 else L.Dense(4, activation="relu")(i)
    h = L.MaxPooling2D(2)(h) if seed % 2 else h
    h = L.Dense(8, activation="relu")(L.Flatten()(h))
    model = keras.Model(i, L.Dense(3)(h))
    gm = tfgeom.GeometryModel(model)
    x = r.uniform(0.2, 0.8, (6, 6, 6, 1)).astype("float32")
    eps = 0.03
    certs = {m: gm.certify(x, eps, method=m, **({"time_limit": 20.0} if m == "bab" else {}))
             for m in ("ibp", "crown", "alpha-crown", "bab", "milp")}
    assert np.all(certs["milp"].min_margin >= certs["crown"].min_margin - 1e-4)
    assert np.all(certs["crown"].min_margin >= certs["ibp"].min_margin - 1e-4)
    cls = gm.predict(x)
    adv = attacks.pgd(gm, x, eps, steps=40).x_adv
    samples = [adv] + [np.clip(x + r.uniform(-eps, eps, x.shape), 0, 1).astype("float32") for _ in range(30)]
    samples += [np.clip(x + eps * r.choice([-1.0, 1.0], x.shape), 0, 1).astype("float32") for _ in range(30)]
    broken = np.zeros(len(x), bool)
    for s in samples:
        broken |= gm.predict(s) != cls
    for method, cert in certs.items():
        assert not np.any(cert.certified & broken), method
    assert np.array_equal(certs["milp"].certified, certs["bab"].certified)  # both complete on these nets


def test_branch_and_bound_refuses_a_threshold_relu_before_any_work(digits):
    """`method="bab"` on a network with ReLU(threshold=...) is refused up front (its leaves would need the MILP
    encoding that layer lacks), not after a search has started."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.ReLU(threshold=0.1)(keras.layers.Dense(8)(keras.layers.Flatten()(inputs)))
    gm = tfgeom.GeometryModel(keras.Model(inputs, keras.layers.Dense(10)(h)))
    start = time.perf_counter()
    with pytest.raises(ModelError, match="threshold"):
        gm.certify(digits.x[:2], 0.05, method="bab")
    assert time.perf_counter() - start < 20
    assert issubclass(ModelError, TfgeomError)
