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

import re
import tomllib
from pathlib import Path

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
