"""Certification of many inputs as a resumable run: one record per input, written as each chunk finishes.

`tfgeom certify` is a loop over chunks of inputs; each chunk's certificates
(or certified radii) become JSON-ready records appended to a
`tfgeom.execution.store.RecordLog`, so an interrupted run keeps every
finished input and `--resume` certifies only the others.
"""
import numpy as np

from tfgeom.errors import InputError


def certify_records(gm, x, y, index, eps, norm, method, radius, intermediate, time_limit, executor=None):
    """Certify inputs `x[index]` for labels `y[index]`; one record per input.

    Args:
        gm: the `GeometryModel`.
        x: `[N, ...]` inputs.
        y: `[N]` their labels.
        index: `[K]` which inputs.
        eps: ball radius in input units (ignored with `radius`).
        norm: as in `GeometryModel.certify`.
        method: as in `GeometryModel.certify`.
        radius: find each input's certified radius instead (`GeometryModel.certified_radius`).
        intermediate: as in `GeometryModel.certify`.
        time_limit: as in `GeometryModel.certify` (`"bab"` only).
        executor: where the inputs run (`tfgeom.execution`). Defaults to `None`.

    Returns:
        `[{"index", "certified", "min_margin", "status"}]`, or with `radius`
        `[{"index", "radius_input_units", "radius_fraction_of_range", "converged", "deepfool_norm_input_units"}]`
        (the certified radius is a lower bound on the distance to the boundary, DeepFool's norm an upper bound;
        None where DeepFool did not change the label).
    """
    span = gm.bounds[1] - gm.bounds[0]
    if radius:
        if method == "bab":
            raise InputError("--radius with --method bab would run branch and bound at every bisection step; "
                             "use --method alpha-crown for radii, or bab at one --eps")
        attack = gm.deepfool(x[index], norm=norm, executor=executor)  # the bracket's upper end
        r = gm.certified_radius(x[index], norm=norm, method=method, cls=y[index], intermediate=intermediate,
                                attack=attack, executor=executor)
        found = attack.success & (attack.adv_labels != y[index])
        return [{"index": int(i), "radius_input_units": float(r.radius[k]),
                 "radius_fraction_of_range": float(r.radius[k] / span), "converged": bool(r.converged[k]),
                 "deepfool_norm_input_units": float(attack.norms[k]) if found[k] else None}
                for k, i in enumerate(index)]
    extra = {"time_limit": time_limit} if method == "bab" else {}
    cert = gm.certify(x[index], eps, norm=norm, method=method, cls=y[index], intermediate=intermediate,
                      executor=executor, **extra)
    status = cert.status or ["-"] * len(index)
    return [{"index": int(i), "certified": bool(cert.certified[k]), "min_margin": float(cert.min_margin[k]),
             "status": status[k]} for k, i in enumerate(index)]


def certify_all(gm, x, y, log, chunk, how, executor=None, finished=None):
    """Certify every input not yet in `log`, `chunk` at a time, appending each chunk's records as it finishes.

    Args:
        gm: the `GeometryModel`.
        x: `[N, ...]` inputs.
        y: `[N]` their labels.
        log: a `RecordLog`; inputs whose index it holds are skipped.
        chunk: inputs per call.
        how: `(eps, norm, method, radius, intermediate, time_limit)`, as in `certify_records`.
        executor: where the inputs run. Defaults to `None`.
        finished: `finished(count, todo)` after each chunk (`count` inputs of this run's `todo` done), or None.
    """
    todo = [i for i in range(len(x)) if i not in log.records]
    for k in range(0, len(todo), chunk):
        index = np.array(todo[k : k + chunk])
        log.append(certify_records(gm, x, y, index, *how, executor=executor))
        if finished is not None:
            finished(k + len(index), len(todo))
