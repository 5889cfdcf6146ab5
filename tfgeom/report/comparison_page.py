"""`compare.html`: the models side by side, the paired table, the comparison claims and overlaid plots."""
import html

import numpy as np

from tfgeom.report.runner import VERDICT_COLOURS, embed_figure, html_table, interval_text


def _figures(comparison, out):
    """Overlaid plots written into `out`: `[(title, file)]`."""
    from tfgeom.analyses import plots

    figures = []

    def evidence(name, section, *keys):
        node = comparison.reports[name]["sections"].get(section, {}).get("evidence", {})
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return None if node is None else np.array([np.nan if v is None else v for v in node], np.float64)

    names = comparison.names
    for norm in ("l2", "linf"):
        series = {n: evidence(n, "deepfool", f"{norm}_norms") for n in names}
        if all(v is not None and np.isfinite(v).any() for v in series.values()):
            file = f"compare_deepfool_{norm}.png"
            plots.histogram(series, f"DeepFool {norm.upper()} norm (input units)", "Distance to the boundary",
                            out / file)
            figures.append((f"DeepFool {norm.upper()} norms", file))
    profiles = {n: comparison.reports[n]["sections"].get("curvature", {}).get("profile") for n in names}
    if all(p for p in profiles.values()):
        plots.curvature_profiles({n: (p["mean_negative"], p["mean_positive"]) for n, p in profiles.items()},
                                 out / "compare_curvature_profiles.png")
        figures.append(("Curvature profiles", "compare_curvature_profiles.png"))
    densities = {n: comparison.reports[n]["sections"].get("curvature", {}).get("spectrum_density") for n in names}
    if all(d for d in densities.values()):
        plots.curvature_densities({n: (d["edges"], d["share"]) for n, d in densities.items()},
                                  out / "compare_curvature_spectra.png")
        figures.append(("Curvature spectra (all d - 1 directions)", "compare_curvature_spectra.png"))
    flat = {n: evidence(n, "curvature", "flat_fraction_all") for n in names}
    if all(v is not None and np.isfinite(v).any() for v in flat.values()):
        plots.histogram(flat, "flat fraction of the curvature spectrum (per boundary point)", "Flatness",
                        out / "compare_flat_fraction.png", bins=20)
        figures.append(("Flat fraction of the whole spectrum", "compare_flat_fraction.png"))
    radii = {n: comparison.reports[n]["sections"].get("certification", {}).get("radii_fraction_of_range", {})
             .get("crown") for n in names}
    if all(r for r in radii.values()):
        plots.histogram({n: np.asarray(r, np.float64) for n, r in radii.items()},
                        "CROWN certified Linf radius (fraction of the input range)", "Certified radii",
                        out / "compare_crown_radius.png", bins=20)
        figures.append(("CROWN certified radii (the lower end of the distance bracket)", "compare_crown_radius.png"))
    return figures


def _side_by_side(comparison, out, section, part):
    """Each model's figure of `section` whose title contains `part`, in one row."""
    cells = []
    for name in comparison.names:
        for fig in comparison.reports[name]["sections"].get(section, {}).get("figures", []):
            if part in fig.get("title", "").lower():
                picture = embed_figure(out, f"{name}/{fig['file']}")
                cells.append(f"<td><b>{html.escape(name)}</b>{picture}</td>")
                break
    if len(cells) != len(comparison.names):
        return ""
    return f"<h3>{html.escape(section)}: {html.escape(part)}</h3><table><tr>{''.join(cells)}</tr></table>"


def _rows_table(rows):
    out = []
    for key, row in rows.items():
        card = {"value": row["value"], "low": row["low"], "high": row["high"]}
        out.append([row["label"], interval_text(card), row["n"], "paired" if row["paired"] else "unpaired",
                    row.get("a"), row.get("b")])
    return html_table(["measure", "estimate [95% interval]", "examples", "resampling", "reference", "this model"], out)


def _claims_table(cards):
    rows = []
    for c in cards:
        colour = VERDICT_COLOURS.get(c["verdict"], "#fff")
        est = interval_text({"value": c["estimate"], "low": c["low"], "high": c["high"]})
        rows.append(f"<tr><td style='text-align:left'>{html.escape(c['statement'])}<br><small>"
                    f"{html.escape(c['source'])}</small></td><td><small>{html.escape(c['criterion'])}</small></td>"
                    f"<td>{html.escape(est)}</td><td>{c['examples']}</td><td style='background:{colour}'><b>"
                    f"{html.escape(c['verdict'])}</b><br><small>{html.escape(c['note'])}</small></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("claim", "criterion", "estimate [95% interval]", "examples", "verdict"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render(comparison, out):
    """The self-contained page (figures embedded)."""
    names = comparison.names
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tfgeom comparison</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}",
             "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;display:block}",
             "</style></head><body>", "<h1>tfgeom comparison</h1>",
             f"<p>models: {' · '.join(f'<b>{html.escape(n)}</b>' for n in names)} (reference: "
             f"<b>{html.escape(names[0])}</b>), analysed on the same inputs with the same seed and settings; "
             "each model's own report is in its folder.</p>"]
    for name in names[1:]:
        pair = comparison.pairs[name]
        parts.append(f"<h2>{html.escape(name)} against {html.escape(names[0])}</h2>")
        parts.append("<h3>Comparison claims</h3><p>Fixed in code before any measurement "
                     "(tfgeom.report.comparison.CLAIMS); the robust model is the one with the larger median "
                     "DeepFool L2 norm by its paired interval.</p>")
        parts.append(_claims_table(pair["claims"]))
        parts.append("<h3>Paired differences</h3><p>Ratios are this model's median over the reference's, "
                     "differences this model's mean minus the reference's; 95% bootstrap intervals over examples, "
                     "both models' values of an example resampled together.</p>")
        parts.append(_rows_table(pair["rows"]))
    cards = {n: comparison.reports[n].get("claims", []) for n in names}
    keys = [c["key"] for c in cards[names[0]]]
    if keys:
        rows = [[k] + [next((c["verdict"] for c in cards[n] if c["key"] == k), "-") for n in names] for k in keys]
        parts.append("<h2>Single-model scorecards side by side</h2>" + html_table(["claim", *names], rows))
    parts.append("<h2>Overlaid plots</h2>")
    for title, file in _figures(comparison, out):
        parts.append(f"<h3>{html.escape(title)}</h3>{embed_figure(out, file)}")
    for section, part in (("curvature", "section"), ("feature_space", "pca")):
        parts.append(_side_by_side(comparison, out, section, part))
    parts.append("</body></html>")
    return "\n".join(parts)
