"""The README and the docs are a contract: every Python snippet and every `tfgeom ...` command line in
them runs here, on the demo CNN (trained for one epoch on 1,000 of the built-in MNIST digits), in a folder
holding the `model.keras`, `data.npz` and `analyze.toml` the snippets name. Each is timed (printed with
-s); the time target (under a minute on 2 cores) is checked by reading these, not asserted."""
import pathlib
import re
import shlex
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import tfgeom
from tfgeom.cli.main import app

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "<!-- snippet: not run"
NOT_RUN_COMMANDS = ("demo",)  # .ci/run runs `tfgeom demo` itself (minutes)


def _blocks(language):
    """`(page, index, code)` of each fenced block in `language` not preceded by the skip mark."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for k, match in enumerate(re.finditer(rf"```{language}\n(.*?)```", text, re.S)):
            before = text[: match.start()].rstrip().splitlines()[-1:] or [""]
            if not before[0].startswith(SKIP_MARK):
                found.append(pytest.param(match.group(1), id=f"{page.name}-{language}{k}"))
    return found


def _commands():
    """Each `tfgeom ...` line of the bash blocks (comments cut), except the commands .ci/run runs itself."""
    found = []
    for param in _blocks("bash"):
        for line in param.values[0].splitlines():
            line = line.strip()
            if line.startswith("tfgeom ") and "&&" not in line:
                words = shlex.split(line, comments=True)[1:]
                if words[0] not in NOT_RUN_COMMANDS:
                    found.append(pytest.param(words, id=" ".join(words[:4])))
    return found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("snippets")
    data = tfgeom.data.load("mnist-sample")
    model = tfgeom.zoo.train(tfgeom.zoo.demo_cnn(), data.x_train[:1000], data.y_train[:1000], epochs=1, seed=0)
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", x_train=data.x_train[:1000], y_train=data.y_train[:1000], x_test=data.x[:200],
             y_test=data.y[:200])
    (folder / "analyze.toml").write_text("[curvature]\nk = 5\n\n[subspace]\nfit = 10\nevaluate = 20\ndims = [2, 5]\n")
    return folder


def test_every_page_has_runnable_snippets():
    assert _blocks("python") and _commands()


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_snippet_runs(code, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    start = time.perf_counter()
    exec(compile(code, "<snippet>", "exec"), {"__name__": "snippet"})
    print(f"python snippet: {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("words", _commands())
def test_command_line_runs(words, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    start = time.perf_counter()
    result = CliRunner().invoke(app, words)
    assert result.exit_code == 0, result.output
    print(f"tfgeom {' '.join(words)}: {time.perf_counter() - start:.1f} s")
