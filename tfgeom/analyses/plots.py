"""Matplotlib figures for reports (Agg backend, PNG files)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram(series, xlabel, title, path, bins=40):
    """Overlaid histograms of `{label: values}`; writes `path` (PNG)."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    finite = [np.asarray(v)[np.isfinite(v)] for v in series.values()]
    edges = np.histogram_bin_edges(np.concatenate(finite) if finite else [0.0, 1.0], bins=bins)
    for (label, values), vals in zip(series.items(), finite):
        ax.hist(vals, bins=edges, alpha=0.6, label=f"{label} (median {np.median(vals):.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _as_picture(img, bounds):
    """An image scaled from the data's `bounds` to [0, 1] for imshow: `[H, W]` (one channel) or `[H, W, 3]`.

    imshow clips RGB floats to [0, 1] and ignores vmin/vmax for them, so every
    range (0..255, -1..1, normalised) is mapped here, and values a float
    rounding puts just outside are clipped silently.
    """
    img = np.asarray(img, np.float64)
    low, high = bounds
    img = np.clip((img - low) / (high - low), 0.0, 1.0)
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0]
    if img.ndim == 3 and img.shape[-1] != 3:
        return img.mean(axis=-1)  # neither gray nor RGB: show the channel mean
    return img


def show_image(ax, img, bounds):
    """Draw one input on `ax` with the data's bounds (gray for one channel, RGB for three)."""
    picture = _as_picture(img, bounds)
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_pairs(originals, perturbed, titles, path, bounds=(0.0, 1.0)):
    """A strip: originals on top, perturbed in the middle, the perturbation below; writes `path`.

    The perturbation `perturbed - original` (channel mean for RGB) is drawn with a
    diverging colour map whose scale is the largest |value| in the strip, so it is
    amplified to be visible; the colour bar gives its values in input units.
    """
    n = len(originals)
    diff = np.asarray(perturbed, np.float64) - np.asarray(originals, np.float64)
    diff = diff.mean(axis=-1) if diff.ndim == 4 else diff
    scale = float(np.abs(diff).max()) or 1.0
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n + 0.8, 4.6), dpi=110, squeeze=False)
    for i in range(n):
        show_image(axes[0][i], originals[i], bounds)
        show_image(axes[1][i], perturbed[i], bounds)
        shown = axes[2][i].imshow(diff[i], cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
        axes[2][i].set_xticks([])
        axes[2][i].set_yticks([])
        axes[0][i].set_title(titles[i], fontsize=7)
    axes[0][0].set_ylabel("input", fontsize=7)
    axes[1][0].set_ylabel("perturbed", fontsize=7)
    span = bounds[1] - bounds[0]
    axes[2][0].set_ylabel(f"perturbation\nx{span / scale:.3g}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    bar = fig.colorbar(shown, cax=fig.add_axes([0.92, 0.06, 0.015, 0.25]))
    bar.ax.tick_params(labelsize=6)
    bar.set_label("input units", fontsize=6)
    fig.savefig(path)
    plt.close(fig)
    return path


def curvature_density(spectrum, profile, path):
    """Estimated density of all d - 1 principal curvatures (stochastic Lanczos quadrature, pooled over points),
    log scale, with the flatness band and the computed extreme curvatures marked."""
    count = max(spectrum.nodes.shape[0] * spectrum.nodes.shape[1], 1)  # points x probes: weights sum to 1
    nodes, weights = spectrum.nodes.ravel(), spectrum.weights.ravel() / count
    extreme = np.abs(profile.values).max() if profile.values.size else 1.0
    top = max(float(np.abs(nodes).max(initial=0.0)), float(extreme), 1e-12)
    bins = np.linspace(-1.05 * top, 1.05 * top, 81)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.hist(nodes, bins=bins, weights=weights, color="tab:purple", alpha=0.8, log=True)
    band = spectrum.flat_tol * float(np.median(spectrum.kappa_max)) if len(spectrum.kappa_max) else 0.0
    ax.axvspan(-band, band, color="gray", alpha=0.15, label=f"|kappa| <= {spectrum.flat_tol:g} kappa_max (median)")
    for v in (profile.mean_negative[:1], profile.mean_positive[-1:]):
        for value in np.atleast_1d(v):
            ax.axvline(value, color="black", lw=0.8, ls="--")
    ax.set_xlabel("principal curvature kappa (1/input units)")
    ax.set_ylabel("share of directions")
    flat = float(np.median(spectrum.flat_fraction)) if len(spectrum.flat_fraction) else float("nan")
    ax.set_title(f"All {spectrum.input_dim - 1} directions: median flat fraction {flat:.3f} "
                 f"({len(spectrum.flat_fraction)} points; dashed: mean extremes)", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


def curvature_profile(profile, path):
    """The paper's profile: mean sorted principal curvatures, both ends, flat middle elided."""
    k = len(profile.mean_negative)
    d = profile.input_dim
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    left = np.arange(1, k + 1)
    right = np.arange(2 * k + 6, 3 * k + 6)
    ax.plot(left, profile.mean_negative, "o-", color="tab:blue", ms=3, label="most negative")
    ax.plot(right, profile.mean_positive, "o-", color="tab:red", ms=3, label="most positive")
    ax.plot([k + 1, 2 * k + 5], [0, 0], ":", color="gray")
    ax.text(1.5 * k + 3, 0, f"{d - 1 - 2 * k} directions\nbetween", ha="center", va="bottom", fontsize=7)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks([1, k, 2 * k + 6, 3 * k + 5])
    ax.set_xticklabels(["1", str(k), str(d - k), str(d - 1)])
    ax.set_xlabel("rank of the principal curvature")
    ax.set_ylabel("mean curvature")
    flat = float(np.mean(profile.flat_fraction)) if len(profile.flat_fraction) else float("nan")
    bound = "<= " if profile.saturated.any() else ""
    ax.set_title(
        f"Curvature profile ({len(profile.values)} points, {profile.hvp}); "
        f"near-flat {bound}{100 * flat:.1f}%",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def boundary_sections(sections, path):
    """One panel per section: classes coloured, the boundary F = 0 traced in black."""
    n = len(sections)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.5), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab10")
    shown = set()
    for ax, sec in zip(axes[0], sections):
        shown.update(int(c) for c in np.unique(sec.labels))
        r = float(sec.offsets[-1])
        ax.imshow(sec.labels, origin="lower", extent=[-r, r, -r, r], cmap="tab10", vmin=0, vmax=9, alpha=0.55)
        ax.contour(sec.offsets, sec.offsets, sec.margin, levels=[0.0], colors="black", linewidths=1.2)
        ax.plot(0, 0, "k+", ms=8)
        kind = f"curvature {sec.curvature:.3g}" if sec.curvature is not None else "random direction"
        ax.set_title(f"class {sec.classes[0]} | class {sec.classes[1]}\n{kind}", fontsize=8)
        ax.set_xlabel("tangent direction (input units)", fontsize=7)
        ax.set_ylabel("normal (input units)", fontsize=7)
        ax.tick_params(labelsize=6)
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(c % 10), alpha=0.55) for c in sorted(shown)]
    handles.append(plt.Line2D([0], [0], color="black", lw=1.2))
    fig.tight_layout(rect=(0, 0.16, 1, 1))  # room below the panels for the legend
    fig.legend(handles, [f"class {c}" for c in sorted(shown)] + ["boundary"], loc="lower center",
               ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.savefig(path)
    plt.close(fig)
    return path


def subspace_experiments(result, path):
    """Energy of DeepFool perturbations and fooling rates: S_c vs random subspaces, by dimension."""
    rows = result.rows
    m = [r["dim"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    a.plot(m, [r["energy_curved"] for r in rows], "o-", label="in S_c")
    a.plot(m, [r["energy_random"] for r in rows], "s-", label="random subspace")
    a.plot(m, [r["sqrt_m_over_d"] for r in rows], ":", color="gray", label="sqrt(m/d)")
    a.set_xlabel("m")
    a.set_ylabel("‖P r‖ / ‖r‖ (DeepFool r)")
    a.legend(fontsize=7)
    b.plot(m, [r["fooling_curved"] for r in rows], "o-", label="noise in S_c")
    b.plot(m, [r["fooling_random"] for r in rows], "s-", label="noise in random subspace")
    b.set_xlabel("m")
    b.set_ylabel(f"fooling rate at ‖v‖={result.eps:.3g}")
    b.legend(fontsize=7)
    return _save(fig, path)


def scatter(xs, ys, xlabel, ylabel, path):
    """A scatter plot with the y = x line; writes `path`."""
    fig, ax = plt.subplots(figsize=(4.6, 4), dpi=110)
    ax.scatter(xs, ys, s=6, alpha=0.6)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    return _save(fig, path)


def feature_pca(train, train_labels, test, test_labels, path):
    """2-D PCA of training features with each class's hull (in the projection) and test points."""
    from scipy.spatial import ConvexHull, QhullError

    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = np.zeros((2, train.shape[1]))
    basis[: min(2, len(vt))] = vt[:2]  # fewer than two training points span fewer than two directions
    proj, proj_test = (train - mean) @ basis.T, (test - mean) @ basis.T
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=110)
    cmap = plt.get_cmap("tab10")
    for c in np.unique(train_labels):
        pts = proj[train_labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color=cmap(c % 10), alpha=0.25, label=f"class {c}")
        try:
            hull = ConvexHull(pts)
            loop = np.append(hull.vertices, hull.vertices[0])
            ax.plot(pts[loop, 0], pts[loop, 1], color=cmap(c % 10), lw=0.8)
        except (QhullError, ValueError):
            pass
    ax.scatter(proj_test[:, 0], proj_test[:, 1], s=8, c=[cmap(c % 10) for c in test_labels], marker="x")
    ax.set_title("features, first two principal components\n(dots: training, x: test, lines: class hulls)", fontsize=8)
    ax.legend(fontsize=6, markerscale=4, loc="best", ncol=2)
    return _save(fig, path)


def morph_strip(morph, path, bounds=(0.0, 1.0)):
    """Images along a pixel-space morph with the predicted class and distance to the class hull."""
    n = len(morph.t)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.8), dpi=110, squeeze=False)
    for i, ax in enumerate(axes[0]):
        show_image(ax, morph.pixel_path[i], bounds)
        ax.set_title(f"t={morph.t[i]:.2g}: class {morph.pixel_classes[i]}\nhull dist {morph.pixel_hull_distance[i]:.2f}",
                     fontsize=7)
    return _save(fig, path)


def path_strip(anchors, labels, path, bounds=(0.0, 1.0)):
    """Images at the vertices of a path with their predicted class."""
    n = len(anchors)
    fig, axes = plt.subplots(1, n, figsize=(1.3 * n, 1.7), dpi=110, squeeze=False)
    for i, ax in enumerate(axes[0]):
        show_image(ax, anchors[i], bounds)
        name = "start" if i == 0 else "end" if i == n - 1 else f"anchor {i}"
        ax.set_title(f"{name}\nclass {labels[i]}", fontsize=7)
    return _save(fig, path)


def roc(curves, path):
    """ROC curves `{name: (fpr, tpr, auc)}`; writes `path`."""
    fig, ax = plt.subplots(figsize=(4.4, 4), dpi=110)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.axvline(0.05, color="gray", lw=0.5)
    ax.set_xlabel("false-positive rate (clean)")
    ax.set_ylabel("true-positive rate (perturbed)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def certified_accuracy(curves, xlabel, path):
    """Certified accuracy against the radius: `{label: (eps [k], accuracy [k])}`; writes `path`."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, (eps, acc) in curves.items():
        ax.plot(eps, acc, drawstyle="steps-post", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curvature_profiles(profiles, path):
    """Several models' curvature profiles on one axis: `{label: (mean_negative [k], mean_positive [k])}`."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for i, (label, (negative, positive)) in enumerate(profiles.items()):
        k = len(negative)
        colour = f"C{i}"
        ax.plot(np.arange(1, k + 1), negative, "o-", color=colour, ms=3, label=label)
        ax.plot(np.arange(k + 3, 2 * k + 3), positive, "o-", color=colour, ms=3)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("rank of the principal curvature (most negative, then most positive)")
    ax.set_ylabel("mean curvature")
    ax.set_title("Curvature profiles", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def curvature_densities(densities, path):
    """Several models' pooled curvature densities on one log axis: `{label: (edges [B + 1], share [B])}`."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for label, (edges, share) in densities.items():
        ax.stairs(np.maximum(np.asarray(share, np.float64), 1e-12), np.asarray(edges, np.float64), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("principal curvature kappa (1/input units)")
    ax.set_ylabel("share of directions")
    ax.set_title("Density of all principal curvatures (stochastic Lanczos quadrature)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)
