"""The README's two commands are what CI runs, and the package layout they rely on is declared."""
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_literally_and_in_order():
    """.ci/run contains the README's install+demo and install+test commands, in that order, with no pip upgrade."""
    commands = _readme_commands()
    assert commands == ['pip install . && tfgeom demo', 'pip install -e ".[dev]" && pytest']
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    positions = [ci.index(c) for c in commands]
    assert positions == sorted(positions)
    assert not any("install" in line and "--upgrade" in line for line in ci if not line.startswith("#"))


def test_build_backend_is_declared_for_pep660_editable_installs():
    """pyproject.toml declares setuptools' backend, so `pip install -e` honours the cli/ package mapping."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert "package_dir" in (ROOT / "setup.py").read_text()


def test_cli_package_imports_from_the_installed_mapping():
    """`tfgeom.cli` resolves to the cli/ folder (what the legacy develop mode broke)."""
    import tfgeom.cli.main

    assert pathlib.Path(tfgeom.cli.main.__file__).resolve().parent == ROOT / "cli"
