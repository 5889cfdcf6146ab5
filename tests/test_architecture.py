"""The import contract of docs/architecture.md: one direction of dependency, no circles, no calls back up.

Read from the sources (module-level imports and those inside functions), so
the test needs no TensorFlow and fails on the first new edge against the rule.
"""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Floors, lowest first: a module may import its own floor and the floors below it. The three domain
# packages share a floor but must not import each other.
FLOORS = [
    ("errors", ["tfgeom.errors"]),
    ("runtime", ["tfgeom.runtime"]),
    ("execution", ["tfgeom.execution"]),
    ("domain", ["tfgeom.geometry", "tfgeom.features", "tfgeom.verify"]),
    ("face", ["tfgeom.model", "tfgeom"]),
    ("analyses", ["tfgeom.analyses", "tfgeom.monitor", "tfgeom.keras"]),
    ("report", ["tfgeom.report"]),
    ("cli", ["tfgeom.cli"]),
]
DOMAINS = ("tfgeom.geometry", "tfgeom.features", "tfgeom.verify")
# The one edge up the floors: a Ray worker builds its GeometryModel from the driver's recipe.
ALLOWED_UP = {("tfgeom.execution.ray", "tfgeom.model")}


def modules():
    """`{dotted name: path}` of the library and the CLI (installed as `tfgeom.cli`)."""
    out = {}
    for path in sorted((ROOT / "tfgeom").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[0] == "cli":
            parts = ["tfgeom", "cli", *parts[1:]]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name, path, known):
    """The tfgeom modules `name` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tfgeom"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "tfgeom":
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                found.add(full if full in known else module)
    found.discard(name)
    return found


def floor(name):
    best = None
    for rank, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{name} is on no floor of the architecture; add it to FLOORS"
    return best[0]


def domain(name):
    return next((d for d in DOMAINS if name == d or name.startswith(d + ".")), None)


def graph():
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_import_goes_down_the_floors():
    """No module imports a floor above its own (except the Ray worker's model), and the domain packages
    (geometry, features, verify) do not import each other."""
    bad = []
    for name, targets in graph().items():
        for target in targets:
            if (name, target) in ALLOWED_UP:
                continue
            if floor(target) > floor(name):
                bad.append(f"{name} -> {target} (floor {FLOORS[floor(name)][0]} imports {FLOORS[floor(target)][0]})")
            elif domain(name) and domain(target) and domain(name) != domain(target):
                bad.append(f"{name} -> {target} (domain packages import only what lies below them)")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(sorted(bad))


def test_no_import_circle():
    """The module import graph (imports inside functions included) has no cycle."""
    edges = graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target in edges and target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _model_methods():
    tree = ast.parse((ROOT / "tfgeom" / "model.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GeometryModel")
    return {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def test_core_modules_do_not_call_the_geometry_model_face():
    """Cores call cores: no `gm.<method>(...)` of `GeometryModel` in geometry/, features/, verify/ (the
    face composes them); `gm.check` (validation) and `gm.runtime` are what cores use."""
    methods = _model_methods() - {"check"}
    bad = []
    for package in DOMAINS:
        for path in (ROOT / package.replace(".", "/")).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner = node.func.value
                owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
                if owner_name == "gm" and node.func.attr in methods:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} gm.{node.func.attr}(...)")
    assert not bad, "core modules calling GeometryModel methods:\n" + "\n".join(bad)


def _literal_calls(tree, attr):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            args = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if args:
                yield node, args[0].value


def test_every_stage_run_is_declared_once_next_to_its_function():
    """Each stage name passed to `execution.run` is declared by exactly one `@execution.stage(...)`,
    and the executor module itself declares none and imports no domain module."""
    declared, used = {}, set()
    for path in (ROOT / "tfgeom").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for _, name in _literal_calls(tree, "stage"):
            declared.setdefault(name, []).append(str(path.relative_to(ROOT)))
        used |= {name for _, name in _literal_calls(tree, "run") if path.parts[-2] != "execution"}
        used |= {name for _, name in _literal_calls(tree, "map")}
    assert {k: v for k, v in declared.items() if len(v) > 1} == {}
    assert used - set(declared) == set(), f"stages run but never declared: {sorted(used - set(declared))}"
    assert not any("execution" in p for paths in declared.values() for p in paths)


def test_bound_propagation_layers_are_known_to_the_shared_layer_table():
    """Every Keras layer class certification converts has an entry in `tfgeom.runtime.layers.PIECEWISE_LINEAR`,
    the table curvature's `hvp="auto"` reads too."""
    from tfgeom.runtime.layers import PIECEWISE_LINEAR
    from tfgeom.verify.graph import CONVERTERS

    assert set(CONVERTERS) <= set(PIECEWISE_LINEAR)


def test_ibp_and_crown_do_not_import_the_milp_solver():
    """Certifying by IBP and CROWN (and loading a model) imports neither cvxpy nor the CLI."""
    code = (
        "import sys, numpy as np, keras, tfgeom\n"
        "i = keras.Input((6,)); m = keras.Model(i, keras.layers.Dense(3)(keras.layers.Dense(8, activation='relu')(i)))\n"
        "gm = tfgeom.GeometryModel(m)\n"
        "x = np.full((2, 6), 0.5, np.float32)\n"
        "gm.certify(x, 0.01, method='ibp'); gm.certify(x, 0.01, method='crown')\n"
        "print(sorted(k for k in ('cvxpy', 'tfgeom.cli') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_public_names_users_write_still_resolve():
    """The names the README and docs use stay where users find them after the move into subpackages."""
    import tfgeom

    assert tfgeom.GeometryModel.__module__ == "tfgeom.model"
    assert callable(tfgeom.data.load) and callable(tfgeom.data.validate) and callable(tfgeom.zoo.demo_cnn)
    assert tfgeom.keras.GeometryMonitor.__name__ == "GeometryMonitor"
    assert tfgeom.distributed.RayExecutor.__module__ == "tfgeom.execution.ray"
    from tfgeom.execution import LocalExecutor
    from tfgeom.execution.ray import RayExecutor

    assert issubclass(RayExecutor, tfgeom.execution.Executor) and issubclass(LocalExecutor, tfgeom.execution.Executor)


def test_user_visible_text_names_only_files_users_have():
    """Every `.md` file that library strings, CLI strings, the docs or the README name is in the repository
    (the papers' notes the developers read are not shipped, so nothing may point to them)."""
    import re

    shipped = {p.name for p in ROOT.glob("*.md")} | {p.name for p in (ROOT / "docs").rglob("*.md")}
    texts = [(p, p.read_text(encoding="utf-8")) for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]]
    for path in [*(ROOT / "tfgeom").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        strings = [n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        texts.append((path, "\n".join(strings)))
    missing = sorted({f"{path.relative_to(ROOT)}: {name}" for path, text in texts
                      for name in re.findall(r"[\w-]+\.md\b", text) if name not in shipped})
    assert not missing, missing
    assert all("../shared" not in text for _, text in texts)
