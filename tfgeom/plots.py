"""Matplotlib figures for reports (Agg backend, PNG files)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def image_pairs(originals, perturbed, titles, path, bounds=(0.0, 1.0), cmap="gray"):
    """A strip: originals on top, perturbed below, titled per column; writes `path`."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.2), dpi=110, squeeze=False)
    for i in range(n):
        for row, img in enumerate((originals[i], perturbed[i])):
            ax = axes[row][i]
            img = np.asarray(img)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap=cmap, vmin=bounds[0], vmax=bounds[1])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][i].set_title(titles[i], fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
