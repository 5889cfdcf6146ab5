"""VNN-LIB properties: an input box and an unsafe output region, and the competition's result format.

A VNN-LIB file (the VNN-COMP property format, SMT-LIB syntax) declares inputs
`X_0 ... X_{d-1}` (the ONNX input flattened in its own layout, row-major) and
outputs `Y_0 ... Y_{L-1}`, bounds every input (`(assert (<= X_i c))`,
`(assert (>= X_i c))`), and states the **unsafe** outputs: a conjunction of
assertions over `Y`, each a linear constraint or an `(or (and ...) ...)` of
them. The instance is `sat` when some input of the box reaches an unsafe
output (a counterexample), `unsat` when none does (the property holds).

`parse` reads the forms the VNN-COMP benchmarks use: constraints `(<= A B)`,
`(>= A B)` between a variable or a linear term (`(+ ...)`, `(- ...)`,
`(* c Y_i)`) and a variable or a number, inputs bounded by numbers only, and
an input set that is a disjunction of boxes (`(assert (or (and <input bounds>)
...))`, as ACAS Xu's property 6): `boxes` lists them and `pieces` makes one
single-box property of each; a property holds iff it holds on every box. The
unsafe region becomes a disjunction of conjunctions `A y <= b`; a
`Property`'s `rows` are the single-row form tfgeom proves: the property holds
iff every row `r(y) = a^T y - b > 0` over the box, one row per disjunct (each
disjunct of one constraint, as in every classification benchmark: "Y_j >= Y_c"
becomes the margin row `Y_c - Y_j`).
"""
import re
from typing import NamedTuple, Optional

import numpy as np

from tfgeom.errors import InputError

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VARIABLE = re.compile(r"^([XY])_(\d+)$")


class Property(NamedTuple):
    """A parsed VNN-LIB property (NumPy).

    Fields:
        lower: `[d]` the input box's lower ends (ONNX layout, flattened); with several boxes, of the smallest box
            holding them all.
        upper: `[d]` the upper ends.
        outputs: `L`, the outputs declared.
        disjuncts: list of `(A [k, L], b [k])`: the unsafe region is the union of `{y : A y <= b}`.
        rows: `(A [R, L], b [R])` when every disjunct is one constraint: the property holds iff
            `A y - b > 0` row by row over the box (the disjuncts negated); else None.
        boxes: list of `(lower [d], upper [d])`: the input set is their union (one box unless the file states a
            disjunction of input boxes).
    """

    lower: np.ndarray
    upper: np.ndarray
    outputs: int
    disjuncts: list
    rows: Optional[tuple]
    boxes: list


def _tree(text):
    """Nested lists of the S-expressions (comments dropped)."""
    stack, top = [], []
    for token in _TOKEN.findall("\n".join(line.split(";", 1)[0] for line in text.splitlines())):
        if token == "(":
            stack.append(top)
            top = []
        elif token == ")":
            if not stack:
                raise InputError("unbalanced parentheses (a ')' without '(')")
            done, top = top, stack.pop()
            top.append(done)
        else:
            top.append(token)
    if stack:
        raise InputError("unbalanced parentheses (a '(' is never closed)")
    return top


def _linear(term, outputs):
    """`(coefficients over Y [L], constant)` of a term; inputs are not allowed in output constraints."""
    coeffs = np.zeros(outputs)
    if isinstance(term, str):
        match = _VARIABLE.match(term)
        if match:
            if match.group(1) != "Y":
                raise InputError(f"an output constraint uses the input {term}; tfgeom reads constraints on Y only")
            index = int(match.group(2))
            if index >= outputs:
                raise InputError(f"{term} is not declared (the outputs are Y_0..Y_{outputs - 1})")
            coeffs[index] = 1.0
            return coeffs, 0.0
        try:
            return coeffs, float(term)
        except ValueError:
            raise InputError(f"unknown term {term!r}") from None
    head, args = term[0], term[1:]
    parts = [_linear(a, outputs) for a in args]
    if head == "+":
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    if head == "-":
        if len(parts) == 1:
            return -parts[0][0], -parts[0][1]
        return parts[0][0] - sum(p[0] for p in parts[1:]), parts[0][1] - sum(p[1] for p in parts[1:])
    if head == "*":
        scalars = [p for p in parts if not p[0].any()]
        if len(scalars) < len(parts) - 1:
            raise InputError("a product of outputs is not linear")
        factor = np.prod([p[1] for p in scalars])
        rest = [p for p in parts if p[0].any()] or [(np.zeros(outputs), 1.0)]
        return factor * rest[0][0], factor * rest[0][1]
    raise InputError(f"unknown operator {head!r} in an output constraint")


def _constraint(node, outputs):
    """`(a [L], b)` with the constraint read as `a^T y <= b`."""
    if not isinstance(node, list) or len(node) != 3 or node[0] not in ("<=", ">="):
        raise InputError(f"expected (<= A B) or (>= A B); got {_show(node)}")
    (ca, ka), (cb, kb) = _linear(node[1], outputs), _linear(node[2], outputs)
    if node[0] == "<=":  # A <= B  <=>  (ca - cb) y <= kb - ka
        return ca - cb, kb - ka
    return cb - ca, ka - kb


def _show(node):
    return node if isinstance(node, str) else "(" + " ".join(_show(n) for n in node) + ")"


def _disjuncts(node, outputs):
    """The disjuncts (lists of constraints) of one output assertion."""
    if isinstance(node, list) and node and node[0] == "or":
        return [d for part in node[1:] for d in _disjuncts(part, outputs)]
    if isinstance(node, list) and node and node[0] == "and":
        conj = [[]]
        for part in node[1:]:
            conj = [c + d for c in conj for d in _disjuncts(part, outputs)]
        return conj
    return [[_constraint(node, outputs)]]


def _input_bound(node, lower, upper):
    """Apply `(<= X_i c)` / `(>= X_i c)` (either side) to the box; False if `node` is not an input bound."""
    if not (isinstance(node, list) and len(node) == 3 and node[0] in ("<=", ">=")):
        return False
    a, b = node[1], node[2]
    left = isinstance(a, str) and _VARIABLE.match(a) and a.startswith("X_")
    right = isinstance(b, str) and _VARIABLE.match(b) and b.startswith("X_")
    if not (left or right):
        return False
    name, value, upper_bound = (a, b, node[0] == "<=") if left else (b, a, node[0] == ">=")
    i = int(name[2:])
    if i >= len(lower):
        raise InputError(f"{name} is not declared (the inputs are X_0..X_{len(lower) - 1})")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"input {name} is bounded by {_show(value)}; tfgeom reads input boxes (numbers)") from None
    if upper_bound:
        upper[i] = min(upper[i], value)
    else:
        lower[i] = max(lower[i], value)
    return True


def _input_disjunction(node, d):
    """The disjuncts of `(or (and <input bounds>) ...)` as lists of bounds, or None if `node` is another form."""
    if not (isinstance(node, list) and node and node[0] == "or"):
        return None
    parts = [p[1:] if isinstance(p, list) and p and p[0] == "and" else [p] for p in node[1:]]
    scratch = np.zeros(d), np.zeros(d)
    kinds = {_input_bound(atom, *scratch) for part in parts for atom in part}
    if kinds == {True}:
        return parts
    if True in kinds:
        raise InputError("a disjunct mixes input bounds with output constraints; tfgeom reads disjunctions of "
                         "input boxes and output constraints in separate assertions")
    return None


def _boxes(lower, upper, choices):
    """Every non-empty box of the base box `lower`..`upper` cut by one disjunct of each input disjunction."""
    boxes = [(lower, upper)]
    for parts in choices:
        cut = []
        for low, high in boxes:
            for part in parts:
                lo, hi = low.copy(), high.copy()
                for atom in part:
                    _input_bound(atom, lo, hi)
                cut.append((lo, hi))
        boxes = cut
    return [(lo, hi) for lo, hi in boxes if np.all(lo <= hi)] or boxes[:1]


def _check_box(lower, upper):
    """Refuse an input left unbounded or an empty box (one line)."""
    if not np.all(np.isfinite(lower) & np.isfinite(upper)):
        i = int(np.flatnonzero(~(np.isfinite(lower) & np.isfinite(upper)))[0])
        raise InputError(f"input X_{i} has no lower or no upper bound; tfgeom verifies over boxes")
    if np.any(lower > upper):
        i = int(np.flatnonzero(lower > upper)[0])
        raise InputError(f"the box is empty at X_{i} ({lower[i]} > {upper[i]})")


def parse(path=None, text=None):
    """Read a VNN-LIB property (module docstring) from `path` or `text`.

    Raises:
        InputError: a form tfgeom does not read, an input left unbounded, or an empty box (one line, with the file).
    """
    where = f"VNN-LIB file {str(path)!r}" if path is not None else "VNN-LIB text"
    try:
        if text is None:
            with open(path) as f:
                text = f.read()
        tree = _tree(text)
        names = [n[1] for n in tree if isinstance(n, list) and len(n) >= 2 and n[0] == "declare-const"]
        d = 1 + max([int(v[2:]) for v in names if v.startswith("X_")], default=-1)
        outputs = 1 + max([int(v[2:]) for v in names if v.startswith("Y_")], default=-1)
        if d == 0 or outputs == 0:
            raise InputError("declares no X_i inputs or no Y_j outputs")
        lower, upper = np.full(d, -np.inf), np.full(d, np.inf)
        conj, choices = [[]], []
        for node in tree:
            if not (isinstance(node, list) and node and node[0] == "assert"):
                continue
            body = node[1]
            if _input_bound(body, lower, upper):
                continue
            parts = _input_disjunction(body, d)
            if parts is not None:
                choices.append(parts)
                continue
            conj = [c + d_ for c in conj for d_ in _disjuncts(body, outputs)]
        boxes = _boxes(lower, upper, choices)
        for low, high in boxes:
            _check_box(low, high)
        if conj == [[]]:
            raise InputError("states no output constraint (nothing is unsafe)")
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    disjuncts = [(np.array([a for a, _ in c]), np.array([b for _, b in c])) for c in conj]
    rows = None
    if all(len(b) == 1 for _, b in disjuncts):  # safe iff a^T y > b for every disjunct: rows a^T y - b > 0
        rows = (np.concatenate([a for a, _ in disjuncts]), np.concatenate([b for _, b in disjuncts]))
    lower, upper = np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)
    return Property(lower, upper, outputs, disjuncts, rows, boxes)


def pieces(prop):
    """One single-box `Property` per box of `prop.boxes` (the property holds iff it holds on each)."""
    return [prop._replace(lower=low, upper=high, boxes=[(low, high)]) for low, high in prop.boxes]


def constraints(prop):
    """Every constraint of every disjunct as a row: `(A [S, L], b [S], group [S])`, each row's disjunct in
    `group` (the outputs are unsafe iff, for some disjunct, all its rows have `a^T y - b <= 0`)."""
    a = np.concatenate([a for a, _ in prop.disjuncts]).astype(np.float64)
    b = np.concatenate([b for _, b in prop.disjuncts]).astype(np.float64)
    group = np.concatenate([np.full(len(b_), j) for j, (_, b_) in enumerate(prop.disjuncts)])
    return a, b, group


def disjunct_slack(values, group, count):
    """`(slack [N, J], row [N, J])` from row values `values [N, S]` (`a^T y - b`, or lower bounds of them):
    per disjunct the largest of its rows and that row. A disjunct is met (unsafe) iff its slack is `<= 0`, so
    an attack descends the largest row of a disjunct, and a bound that keeps it positive proves the disjunct
    out of reach."""
    row = np.stack([np.flatnonzero(group == j)[values[:, group == j].argmax(axis=1)] for j in range(count)], 1)
    return np.take_along_axis(values, row, 1), row


def violated(prop, logits):
    """`[N]` whether outputs `logits [N, L]` are unsafe (inside some disjunct)."""
    y = np.asarray(logits, np.float64)
    return np.any([np.all(y @ a.T <= b, axis=1) for a, b in prop.disjuncts], axis=0)


def result_text(verdict, x=None, y=None):
    """The VNN-COMP result file: the verdict line, and for `sat` the counterexample `((X_i v) ... (Y_j v))`."""
    if verdict != "sat":
        return verdict + "\n"
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(x))]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(y))]
    return "sat\n(" + "\n ".join(pairs) + ")\n"
