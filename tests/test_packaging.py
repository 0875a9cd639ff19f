"""The package as a user gets it: the README as a package index shows it, the built wheel and sdist.

- Every link and image of README.md is absolute (a package index page has no repository beside
  it): a file of this repository by the address declared once in pyproject.toml's
  ``[project.urls] Source`` (and the file exists), anything else an external ``https`` URL. No
  other address of the repository is written anywhere (the site's hooks read the declared one).
- ``python -m build`` makes a wheel and an sdist with the license, ``py.typed`` and the metadata;
  each installs into a fresh venv without network (jax and numpy seen through a ``.pth`` file
  pointing at the running interpreter's site-packages) and passes a smoke test there: a
  ridge-regression hypergradient against its closed form, in float64, from the installed copy.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
URLS = PYPROJECT["project"]["urls"]
BASE = URLS["Source"].rstrip("/")
OWNER_NAME = BASE.removeprefix("https://github.com/")
VERSION = PYPROJECT["project"]["version"]

# Markdown links and images, HTML src/href attributes, autolinks.
_LINKS = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)|(?:src|href)=\"([^\"]+)\"|<(https?://[^>]+)>")


def _links(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _LINKS.finditer(text)]


def test_declared_base_is_a_github_repository():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", BASE), BASE
    for name, url in URLS.items():
        assert url.startswith("https://"), (name, url)
    assert URLS["Homepage"].rstrip("/") == BASE
    assert URLS["Changelog"] == f"{BASE}/blob/main/CHANGELOG.md"


def test_readme_links_are_absolute_and_point_at_this_repository():
    links = _links((ROOT / "README.md").read_text())
    assert len(links) >= 8, links  # the image, the docs pages, the paper
    own = 0
    for link in links:
        if link.startswith("#"):  # an anchor within the page works anywhere
            continue
        assert link.startswith("https://"), f"README link not absolute: {link}"
        if OWNER_NAME in link or "githubusercontent" in link:
            assert link.startswith(BASE + "/"), f"{link} is not under {BASE}"
            match = re.fullmatch(
                re.escape(BASE) + r"/(?:blob|raw|tree)/main/([^#?]+)(?:#.*)?", link
            )
            assert match, f"{link}: a file of the repository on its main branch"
            assert (ROOT / match.group(1)).exists(), f"{link}: no {match.group(1)} here"
            own += 1
    assert own >= 6
    image = f"{BASE}/raw/main/docs/images/svm_hyperopt.png"
    assert image in links


def test_the_repository_address_is_written_once():
    """Only pyproject.toml names the repository; the other files derive it or link under it."""
    files = [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "mkdocs.yml",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "docs" / "_tools").glob("*.py")),
    ]
    address = re.compile(
        r"https?://[^\s)\"'>]*" + re.escape(OWNER_NAME.split("/")[0]) + r"[^\s)\"'>]*"
    )
    for path in files:
        for url in address.findall(path.read_text()):
            assert url.startswith(BASE + "/"), (
                f"{path.relative_to(ROOT)}: {url} is not under {BASE}"
            )
    hooks = (ROOT / "docs" / "_tools" / "hooks.py").read_text()
    assert OWNER_NAME not in hooks and 'tomllib.loads((ROOT / "pyproject.toml")' in hooks
    assert "site_url:" not in (ROOT / "mkdocs.yml").read_text()
    assert "repo_url:" not in (ROOT / "mkdocs.yml").read_text()


# ---------------------------------------------------------------------------------------------
# The wheel and the sdist, built and installed into fresh venvs without network.

SMOKE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import implicitdiff
    from implicitdiff import custom_root

    # The installed copy, not a source tree.
    assert Path(implicitdiff.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), (
        implicitdiff.__file__
    )

    def optimality(x, lam, X, y):  # ∇ₓ[½‖Xx − y‖² + ½λ‖x‖²]
        return X.T @ (X @ x - y) + lam * x

    @custom_root(optimality, solve="cg", symmetric=True)
    def ridge(x0, lam, X, y):
        return jnp.linalg.solve(X.T @ X + lam * jnp.eye(X.shape[1]), X.T @ y)

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 6)), rng.normal(size=30)
    Xv, yv = rng.normal(size=(20, 6)), rng.normal(size=20)
    lam = 0.7

    def loss(lam):
        r = Xv @ ridge(jnp.zeros(6), lam, X, y) - yv
        return 0.5 * r @ r

    g = jax.grad(loss)(lam)
    # Closed form: x* = (XᵀX + λI)⁻¹Xᵀy, dx*/dλ = −(XᵀX + λI)⁻¹x*, dL/dλ = (Xv x* − yv)ᵀ Xv dx*/dλ.
    H = X.T @ X + lam * np.eye(6)
    x = np.linalg.solve(H, X.T @ y)
    expected = (Xv @ x - yv) @ Xv @ -np.linalg.solve(H, x)
    assert abs(g - expected) <= 1e-10 * abs(expected), (float(g), expected)
    assert implicitdiff.__version__ == "VERSION", implicitdiff.__version__
    print("smoke ok", implicitdiff.__version__, implicitdiff.__file__, float(g))
    """
)


def _copy_project(dest: Path) -> Path:
    """The files a build reads, copied: the build writes nothing into the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build", reason="the `test` extra's `build` package builds the wheel")
    project = _copy_project(tmp_path_factory.mktemp("project"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--wheel",
            "--sdist",
            "--outdir",
            str(out),
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"implicitdiff-{VERSION}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"implicitdiff-{VERSION}.tar.gz"]
    return wheels[0], sdists[0]


def _metadata(text: str):
    return email.message_from_string(text)


def _check_metadata(meta) -> None:
    project = PYPROJECT["project"]
    assert meta["Name"] == "implicitdiff"
    assert meta["Version"] == VERSION == "0.1.0"
    assert meta["License-Expression"] == "Apache-2.0"
    assert "License-File" in meta and meta["License-File"] == "LICENSE"
    assert meta.get_all("Classifier") == project["classifiers"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {k.lower(): v for k, v in urls.items()} == {k.lower(): v for k, v in URLS.items()}
    assert meta["Requires-Python"] == project["requires-python"]
    requires = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    from packaging.requirements import Requirement  # a dependency of `build`

    def parsed(reqs):
        return sorted((r.name, r.specifier) for r in map(Requirement, reqs))

    assert parsed(requires) == parsed(project["dependencies"])
    assert meta.get_payload().startswith("# implicitdiff")  # the README is the description


@pytest.mark.slow
def test_wheel_and_sdist_contents(dist):
    wheel, sdist = dist
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"implicitdiff-{VERSION}.dist-info"
        assert f"{info}/licenses/LICENSE" in names
        assert "implicitdiff/py.typed" in names
        assert "implicitdiff/__init__.py" in names and "implicitdiff/solvers/_base.py" in names
        assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
        _check_metadata(_metadata(z.read(f"{info}/METADATA").decode()))
        license_text = z.read(f"{info}/licenses/LICENSE").decode()
        assert "Apache License" in license_text and "Version 2.0" in license_text
    with tarfile.open(sdist) as t:
        names = t.getnames()
        top = f"implicitdiff-{VERSION}"
        for name in ("LICENSE", "README.md", "pyproject.toml", "src/implicitdiff/py.typed"):
            assert f"{top}/{name}" in names, name
        _check_metadata(_metadata(t.extractfile(f"{top}/PKG-INFO").read().decode()))


def _fresh_venv(path: Path) -> Path:
    """A venv without pip; jax, numpy (and pip, setuptools) seen from the running interpreter.

    The ``.pth`` lists the running interpreter's site-packages (from its ``sys.prefix``) and its
    ``PYTHONPATH`` entries, except any directory that holds an ``implicitdiff`` package (a source
    tree): the package can only come from what is installed into the venv.
    """
    venv.create(path, with_pip=False, symlinks=True)
    python = path / "bin" / "python"
    scheme = {"base": sys.prefix, "platbase": sys.prefix}
    # In the running interpreter's order: PYTHONPATH first, then site-packages.
    dirs = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    dirs += [sysconfig.get_path(k, vars=scheme) for k in ("purelib", "platlib")]
    dirs = [str(Path(d).resolve()) for d in dict.fromkeys(dirs) if Path(d).is_dir()]
    dirs = [d for d in dirs if not (Path(d) / "implicitdiff" / "__init__.py").exists()]
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_implicitdiff_test_deps.pth").write_text("\n".join(dirs) + "\n")
    return python


def _install_and_smoke(python: Path, artifact: Path, workdir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--ignore-installed", "--no-build-isolation", str(artifact)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    script = workdir / "smoke.py"
    script.write_text(SMOKE.replace("VERSION", VERSION))
    run = subprocess.run(
        [str(python), str(script)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "smoke ok" in run.stdout
    return run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installs_into_a_fresh_venv_and_differentiates(dist, kind, tmp_path):
    artifact = dist[0] if kind == "wheel" else dist[1]
    python = _fresh_venv(tmp_path / "venv")
    out = _install_and_smoke(python, artifact, tmp_path)
    installed = out.split()[-2]
    assert Path(installed).resolve().is_relative_to((tmp_path / "venv").resolve()), out
    assert not Path(installed).resolve().is_relative_to(ROOT), out


def test_changelog_top_section_is_the_version():
    """Keep a Changelog: the newest section first; it is pyproject's version (dated once
    released, "Unreleased" until then), or an [Unreleased] section above the released version."""
    headings = re.findall(r"^## \[([^\]]+)\](.*)$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings, "no version section"
    (first, rest), *older = headings
    if first == "Unreleased":
        # Changes since a release: the section below it is that release, dated.
        assert older and re.fullmatch(r" - \d{4}-\d\d-\d\d", older[0][1]), older
    else:
        assert first == VERSION, (first, VERSION)
        assert re.fullmatch(r" - (Unreleased|\d{4}-\d\d-\d\d)", rest), rest
    assert len({h for h, _ in headings}) == len(headings), "a version listed twice"
