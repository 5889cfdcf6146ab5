"""Run registered analyses and write `report.json` and a self-contained `report.html`.

Each analysis' section is written as soon as it finishes (atomically), so an
interrupted run loses at most the analysis in progress; `resume=True` skips
the sections already done for the same model, data and seed whose settings
did not change.
"""
import base64
import datetime
import hashlib
import html
import json
import pathlib
import shutil
import time


from tfgeom.analyses import settings as settings_lib
from tfgeom.analyses import REGISTRY, Context
from tfgeom.report.claims import scorecard
from tfgeom.errors import InputError
from tfgeom.execution.store import ShardStore, jsonable, read_json, write_atomic
from tfgeom.report.labels import label
from tfgeom.execution.lock import folder_lock


def _jsonable(value):
    return jsonable(value, finite=True)


def file_digest(path):
    """SHA-256 of a file (identifies the model in a resumable report)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SCHEMA_VERSION = 2  # report.json layout; see docs/report_schema.md


def select(only):
    """Names of the analyses to run (`only=None`: all registered), in report order.

    `only` is a list of names; each item may itself be a comma-separated list.
    """
    if only is None:
        return list(REGISTRY)
    names = [n.strip() for item in only for n in str(item).split(",") if n.strip()]
    if not names:
        raise InputError(f"--only {','.join(map(str, only))!r} names no analysis; name some of {list(REGISTRY)} "
                         "or leave --only out to run them all")
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise InputError(f"unknown analysis {unknown}; available: {list(REGISTRY)}")
    return [name for name in REGISTRY if name in names]


def configure(overrides=None):
    """Every analysis' effective settings (`{name: Settings}`) with `overrides` `{name: {key: value}}` applied."""
    return settings_lib.resolve(REGISTRY, overrides or {})


def run_analyses(gm, dataset, out_dir, *, only=None, seed=0, resume=False, identity=None, progress=None,
                 settings=None, executor=None):
    """Run analyses on `dataset` and write the report into `out_dir`.

    Args:
        gm: the `GeometryModel`.
        dataset: a validated `tfgeom.runtime.data.Dataset`, already cut to the examples to analyse.
        out_dir: folder for `report.json`, `report.html` and figures (created).
        only: names of analyses to run. Defaults to `None`: all registered.
        seed: seed for randomness. Defaults to `0`.
        resume: keep sections already done by an earlier run with the same
            `identity` and the same settings for that section. Defaults to `False`.
        identity: JSON-ready dict identifying model and data; a resumed run must match it.
        progress: `progress(description, done, total)` or None.
        settings: `{name: {key: value}}` overriding analyses' defaults (see
            `tfgeom.analyses.settings`). Defaults to `None`.
        executor: where per-example work runs (`tfgeom.execution.executor.LocalExecutor`,
            `tfgeom.execution.ray.RayExecutor`). Its finished shards go to
            `out_dir/shards` (kept by `resume`, cleared otherwise) unless it has
            its own store. Defaults to `None`: in this process, no shards.

    Returns:
        The report as a dict (what `report.json` holds).

    Raises:
        InputError: another run is writing into `out_dir` (see `tfgeom.execution.lock`).
    """
    out = pathlib.Path(out_dir)
    with folder_lock(out):
        own_store = executor is not None and executor.store is None
        if own_store:
            executor.store = _shard_store(out, resume)
        try:
            return _run(gm, dataset, out, only, seed, resume, identity, progress, settings, executor)
        finally:
            if own_store:
                executor.store = None


def _shard_store(out, resume):
    folder = out / "shards"
    if not resume and folder.exists():
        shutil.rmtree(folder)  # shards of an earlier run are reused only when resuming it
    return ShardStore(folder)


def _run(gm, dataset, out, only, seed, resume, identity, progress, settings, executor):
    names = select(only)
    effective, scaled = settings_lib.scale_defaults(configure(settings), settings, gm.runtime.input_dim)
    path = out / "report.json"
    identity = _jsonable(dict(identity or {}, seed=seed))
    report = {
        "schema_version": SCHEMA_VERSION,
        "tfgeom": _version(),
        "identity": identity,
        "model": _jsonable(dict(gm.info(), scores_agree_with_model_prediction=gm.agreement(dataset.x))),
        "settings": {name: _jsonable(effective[name]._asdict()) for name in names},
        "scaled_defaults": {k: v for k, v in scaled.items() if k.split(".")[0] in names},
        "sections": {},
    }
    if resume and path.exists():
        report["sections"] = read_json(path, identity).get("sections", {})
    context = Context(gm, dataset, out, seed, progress, executor)
    for name in names:
        analysis = REGISTRY[name]
        wanted = report["settings"][name]
        done = report["sections"].get(name, {})
        if done.get("status") == "done" and done.get("settings") == wanted:
            continue  # finished earlier with the same settings
        start = time.perf_counter()
        context.seconds = {k: v.get("seconds", 0.0) for k, v in report["sections"].items() if k != name}
        context.tell(f"section {name}", 0, 1)
        try:
            result = analysis.compute(context, effective[name])
        except InputError as err:  # a property of this model and data (e.g. no boundary reached): say so, go on
            result = {"summary": {"skipped": str(err)}}
        shown = analysis.present(result, context, effective[name]) if "skipped" not in result.get("summary", {}) else {}
        section = {key: value for key, value in result.items() if key != "data"}
        section = dict(section, **shown, title=analysis.title, intro=analysis.intro, settings=wanted, status="done",
                       seconds=round(time.perf_counter() - start, 2))
        report["sections"][name] = _jsonable(section)
        context.tell(f"section {name}", 1, 1)
        report["written"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        report["claims"] = _jsonable(scorecard(report["sections"]))
        write_atomic(path, json.dumps(report, indent=2))
        write_atomic(out / "report.html", render_html(report, out))
    report["claims"] = _jsonable(scorecard(report["sections"]))
    write_atomic(path, json.dumps(report, indent=2))
    write_atomic(out / "report.html", render_html(report, out))
    return report


def _version():
    from tfgeom import __version__

    return __version__


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def embed_figure(out, name):
    """An `<img>` with the PNG `out/name` inlined (a data URI), or a note when it is missing or outside `out`."""
    file = (out / str(name)).resolve()
    if not file.is_relative_to(out.resolve()):  # a report.json edited to name a file elsewhere: never read it
        return f"<p><em>figure {html.escape(str(name))} is outside the report folder; not shown</em></p>"
    if not file.is_file():
        return f"<p><em>missing figure {html.escape(str(name))}</em></p>"
    data = base64.b64encode(file.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def html_table(columns, rows):
    """An HTML table of `rows` (lists of cells) under `columns`, numbers to 4 significant digits."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_line(report):
    """Data set, limit, seed and version: what a reader needs to reproduce the report."""
    ident = report.get("identity", {})
    limit = ident.get("limit")
    items = [
        ("data", ident.get("data", "?")),
        ("examples analysed", f"first {limit}" if limit is not None else "all"),
        ("input bounds", " to ".join(f"{b:g}" for b in ident.get("bounds", [])) or "?"),
        ("seed", ident.get("seed", "?")),
        ("tfgeom", report.get("tfgeom")),
        ("written", report.get("written", "")),
    ]
    line = "<p>" + " · ".join(f"{html.escape(k)}: <b>{html.escape(str(v))}</b>" for k, v in items) + "</p>"
    scaled = "; ".join(f"{k} {v}" for k, v in report.get("scaled_defaults", {}).items())
    extra = [f"training data: {ident['train_data']}" if ident.get("train_data") else "", ident.get("data_note") or "",
             f"sizes chosen for this input size: {scaled}" if scaled else "",
             f"user code imported: {', '.join(ident['imports'])}" if ident.get("imports") else ""]
    return line + "".join(f"<p><small>{html.escape(e)}</small></p>" for e in extra if e)


VERDICT_COLOURS = {"holds": "#d7f0d7", "does not hold": "#f6d5d5", "inconclusive": "#f3f3f3"}


def interval_text(card):
    """`value [low, high]` of a scorecard record, or `-`."""
    if card.get("value") is None:
        return "-"
    if card.get("low") is None or card.get("high") is None:  # too few examples for an interval
        return f"{card['value']:.3g} [no interval]"
    return f"{card['value']:.3g} [{card['low']:.3g}, {card['high']:.3g}]"


def _needed(card):
    """The examples a decisive verdict needs at the observed spread, as text (`-`: none would do)."""
    needed = card.get("examples_needed")
    return "-" if needed is None else str(needed)


def _claims_html(cards):
    if not cards:
        return ""
    rows = []
    for c in cards:
        colour = VERDICT_COLOURS.get(c["verdict"], "#fff")
        rows.append(
            f"<tr><td style='text-align:left'>{html.escape(c['claim'])}<br><small>{html.escape(c['source'])}</small>"
            f"</td><td style='text-align:left'><small>{html.escape(c['statistic'])}; criterion "
            f"{html.escape(c['criterion'])}</small></td><td>{html.escape(interval_text(c))}</td>"
            f"<td>{c['examples']}</td><td>{_needed(c)}</td><td style='background:{colour}'><b>{html.escape(c['verdict'])}</b>"
            f"{'<br><small>' + html.escape(c['note']) + '</small>' if c.get('note') else ''}</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("claim", "measured by", "estimate [95% interval]", "examples",
                                             "examples a verdict needs", "verdict"))
    return ("<h2>The papers' claims on this model</h2><p>Criteria are fixed in the code before any measurement "
            "(tfgeom.report.claims); intervals are bootstrap 95% intervals over examples.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def render_html(report, out):
    """A self-contained HTML page (figures embedded as data URIs)."""
    out = pathlib.Path(out)
    model = report["model"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tfgeom report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}",
        "</style></head><body>",
        "<h1>tfgeom report</h1>",
        _run_line(report),
        _claims_html(report.get("claims", [])),
        "<h2>Model</h2>",
        html_table(["property", "value"], [[k, v] for k, v in model.items()]),
    ]
    for name, section in report["sections"].items():
        parts.append(f"<h2>{html.escape(section.get('title', name))}</h2>")
        if section.get("intro"):
            parts.append(f"<p>{html.escape(section['intro'])}</p>")
        summary = section.get("summary", {})
        if summary:
            parts.append(html_table(["measure", "value"], [[label(k), v] for k, v in summary.items()]))
        for table in section.get("tables", []):
            parts.append(f"<h3>{html.escape(table['title'])}</h3>")
            parts.append(html_table(table["columns"], table["rows"]))
        for figure in section.get("figures", []):
            parts.append(f"<h3>{html.escape(figure['title'])}</h3>{embed_figure(out, figure['file'])}")
        parts.append(f"<p><small>section computed in {section.get('seconds', '?')} s</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)
