"""Wall time of `tfgeom demo` for two checkouts, run one after the other on this machine.

    python benchmarks/demo_time.py OLD_CHECKOUT NEW_CHECKOUT [--epochs 10]

Each checkout runs `tfgeom demo` from its own source (same venv and packages:
the editable install's import hook is set aside so the checkout's files are
imported), into a fresh folder; prints both times, the ratio, and the section times of each
report so that the figures can be compared.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run(checkout, epochs):
    out = tempfile.mkdtemp(prefix="demo-")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    code = (
        "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
        f"sys.path.insert(0, {checkout!r}); import tfgeom; assert tfgeom.__file__.startswith({checkout!r}); "
        "import importlib.util as u; "  # cli/ is installed as tfgeom.cli: map it by hand
        f"spec = u.spec_from_file_location('tfgeom.cli', {checkout!r} + '/cli/__init__.py', "
        f"submodule_search_locations=[{checkout!r} + '/cli']); "
        "m = u.module_from_spec(spec); sys.modules['tfgeom.cli'] = m; spec.loader.exec_module(m); "
        "from tfgeom.cli.main import main; main()"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, "demo", "--out", out, "--epochs", str(epochs)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    return seconds, report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    results = {name: run(path, args.epochs) for name, path in (("old", args.old), ("new", args.new))}
    for name, (seconds, report) in results.items():
        sections = {k: v.get("seconds") for k, v in report["sections"].items()}
        print(f"{name}: {seconds:.1f} s wall; sections {sections}")
    print(f"ratio old/new: {results['old'][0] / results['new'][0]:.2f}")


if __name__ == "__main__":
    main()
