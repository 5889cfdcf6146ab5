"""Claims on enough evidence: analyses repeated in rounds with more examples until each claim is decided.

`tfgeom claims --until-decided` runs the claims' sections once with the given
settings, reads the scorecard, and for every claim still `inconclusive` that
more examples could decide (its `examples_needed` is a number above the
examples it had) doubles the example counts (`Analysis.examples`, e.g.
`curvature.points`) of the sections behind it, capped at the inputs loaded.
It stops when every claim is decided, when more examples cannot decide the
undecided ones, when they cannot get more (the inputs ran out, or a section's
own caps left its count where it was), or after `max_rounds`.

Finished work is reused, never redone: every round writes into the same
report folder with `resume`, so a section whose settings did not change is
kept as it is, and per-example work runs through an executor whose finished
shards (`OUT/shards`, whole batches of the model) are read back when a later
round asks for the same rows with the same parameters (DeepFool of the
analysed inputs, and the leading rows of a grown section).
"""
import json
import pathlib
from typing import NamedTuple

from tfgeom.analyses import REGISTRY
from tfgeom.analyses import settings as settings_lib
from tfgeom.execution.store import jsonable, write_atomic
from tfgeom.report.claims import CLAIMS, SECTIONS
from tfgeom.report.runner import run_analyses
from tfgeom.runtime import statistics as st

ROUNDS = 6


class Round(NamedTuple):
    """One round of `until_decided`.

    Fields:
        index: 0 for the first round.
        settings: `{section: {key: value}}` overrides this round ran with.
        counts: `{"section.key": value}` every example count of the claims' sections as it ran.
        undecided: keys of the claims still `inconclusive` after it.
        grown: `{"section.key": new value}` for the next round (empty: the last round).
        stop: why there is no next round ("" while there is one).
    """

    index: int
    settings: dict
    counts: dict
    undecided: list
    grown: dict
    stop: str


def _needy(cards):
    """Claims more examples could decide: inconclusive, a number of examples would do, and not a claim that more
    examples could only refute while it cannot be refuted (connectivity's "not shown")."""
    unshown = {claim.key: claim.unshown for claim in CLAIMS}
    return [c for c in cards if c["verdict"] == st.INCONCLUSIVE and c.get("examples_needed") is not None
            and c["examples"] < c["examples_needed"] and not (unshown[c["key"]] and c.get("note") == unshown[c["key"]])]


def _grow(report, claims, cap):
    """`{"section.key": doubled value}` for the example counts behind `claims`, each at most `cap`."""
    by_key = {claim.key: claim for claim in CLAIMS}
    grown = {}
    for card in claims:
        for name in by_key[card["key"]].sections:
            ran = report["settings"].get(name, {})
            for key in REGISTRY[name].examples:
                value = int(ran[key])
                if min(2 * value, cap) > value:
                    grown[f"{name}.{key}"] = min(2 * value, cap)
    return grown


def until_decided(gm, dataset, out, *, settings=None, seed=0, identity=None, progress=None, executor=None,
                  resume=False, max_rounds=ROUNDS, on_round=None):
    """Run the claims' sections in rounds, adding examples to the undecided claims' sections (module docstring).

    Args:
        gm: the `GeometryModel` (as `tfgeom.report.runner.run_analyses`, as are `dataset`, `out`, `seed`,
            `identity` and `progress`).
        dataset: the validated `Dataset`: the inputs every round may draw on.
        out: the report folder (every round writes into it).
        seed: seed for random choices.
        identity: what a resumed run must match.
        progress: `progress(description, done, total)` or None.
        settings: `{section: {key: value}}` overrides of the first round.
        executor: where per-example work runs. Defaults to `None`: a
            `LocalExecutor` in this process with shards of the model's batch size.
        resume: keep what an earlier run into `out` finished (the first round; later rounds always do).
        max_rounds: rounds at most. Defaults to `ROUNDS`.
        on_round: called with each finished `Round`.

    Returns:
        `(report, rounds)`: the last round's report (its `claims` is the scorecard) and the `Round`s.
    """
    from tfgeom.execution.executor import LocalExecutor

    executor = executor or LocalExecutor(shard_size=gm.batch_size)
    current = settings_lib.merge({}, settings or {})
    rounds, examples = [], {}
    for index in range(max_rounds):
        report = run_analyses(gm, dataset, out, only=list(SECTIONS), seed=seed, resume=resume or index > 0,
                              identity=identity, progress=progress, settings=current, executor=executor)
        cards = report["claims"]
        undecided = [c["key"] for c in cards if c["verdict"] == st.INCONCLUSIVE]
        needy = _needy(cards)
        # a claim whose examples did not move last round is capped by its section: repeating cannot help it
        claims = [c for c in needy if c["examples"] > examples.get(c["key"], -1)]
        examples = {c["key"]: c["examples"] for c in cards}
        grown = _grow(report, claims, len(dataset.x)) if claims else {}
        stop = ("every claim decided" if not undecided else
                "more examples cannot decide the undecided claims (estimates on the criterion, no examples, or a "
                "claim that can be shown but not refuted)" if not needy else
                f"the inputs ran out ({len(dataset.x)} loaded) for " + ", ".join(c["key"] for c in needy)
                if not grown else f"{max_rounds} rounds" if index == max_rounds - 1 else "")
        counts = {f"{name}.{key}": report["settings"][name][key] for name in SECTIONS
                  for key in REGISTRY[name].examples}
        done = Round(index, current, counts, undecided, {} if stop else grown, stop)
        rounds.append(done)
        if on_round is not None:
            on_round(done)
        if stop:
            break
        current = settings_lib.merge(current, *({name: {key: value}} for name, key, value in
                                                (k.split(".") + [v] for k, v in grown.items())))
    report["rounds"] = [jsonable(r._asdict()) for r in rounds]  # how the evidence was gathered, with the report
    write_atomic(pathlib.Path(out) / "report.json", json.dumps(report, indent=2))
    return report, rounds
