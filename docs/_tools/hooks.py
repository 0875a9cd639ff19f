"""MkDocs hooks: the pages that are built from other files when the site is built.

- ``index.md`` is README.md and ``changelog.md`` is CHANGELOG.md, with their links rewritten
  for the site (``docs/x.md`` → ``x.md``; a file outside docs/ → its page in the repository).
- ``tutorials/<name>.md`` is made by running ``docs/tutorials/<name>.py`` (see
  run_tutorial.py): prose, code, the printed output and the figures of that run, and its run
  time. Nothing is pasted: a broken tutorial breaks the build.
- In every page, a relative link that leaves docs/ (``../tests/x.py``) points at the repository.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import posixpath
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
# The repository's address is declared once, in pyproject.toml ([project.urls] Source); the
# site's repository link, the links to files outside docs/ and the reading of the README's
# absolute links all come from it.
_URLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
BASE = _URLS["Source"].rstrip("/")
REPO_URL = BASE + "/blob/main/"
# An absolute link to a file of this repository under docs/ (the README's images and links must
# be absolute for a package index page) is read as the repository path, so that the site serves
# its own copy.
_OWN_FILE = re.compile(rf"^{re.escape(BASE)}/(?:blob|raw)/[^/]+/(docs/.*)$")
_log = logging.getLogger("mkdocs.hooks.tutorials")
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
_TMP = tempfile.TemporaryDirectory(prefix="implicitdiff-docs-")


def _rewrite_links(markdown: str, src_dir: str, dest_dir: str = "docs") -> str:
    """Relative links of a file in ``src_dir``, for a page in ``dest_dir`` (repository paths)."""

    def fix(m: re.Match) -> str:
        target = m.group(2)
        own = _OWN_FILE.match(target)
        if own is None and re.match(r"^[a-z]+:|^#|^/", target):
            return m.group(0)
        path, _, anchor = (own.group(1) if own else target).partition("#")
        full = posixpath.normpath(posixpath.join("" if own else src_dir, path))
        if full.startswith("docs/"):
            new = posixpath.relpath(full, dest_dir)
        else:
            new = REPO_URL + full
        return m.group(1) + new + ("#" + anchor if anchor else "") + m.group(3)

    return _LINK.sub(fix, markdown)


def _tutorial_page(script: Path, out_dir: Path) -> tuple[str, list[Path]]:
    if os.environ.get("IMPLICITDIFF_DOCS_SKIP_TUTORIALS") == "1":  # quick previews only
        return f"# {script.stem}\n\n*Not run (IMPLICITDIFF_DOCS_SKIP_TUTORIALS=1).*\n", []
    env = dict(os.environ, MPLBACKEND="Agg")
    env.setdefault("IMPLICITDIFF_TUTORIAL_SIZE", "full")
    runner = ROOT / "docs" / "_tools" / "run_tutorial.py"
    proc = subprocess.run(
        [sys.executable, str(runner), str(script), str(out_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tutorial {script.name} failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads((out_dir / "result.json").read_text())
    doc = result["doc"].strip().split("\n")
    title, intro = doc[0], "\n".join(doc[1:]).strip()
    parts = [f"# {title}", "", intro, ""]
    load = "{:.1f} at its start, {:.1f} at its end".format(*result["load"])
    parts.append(
        f"*This page ran the script [`{script.name}`]({script.name}) when the site was built: "
        f"{result['seconds']:.0f} s on {os.cpu_count()} CPU cores ({platform.machine()}), at the "
        f"size `IMPLICITDIFF_TUTORIAL_SIZE={env['IMPLICITDIFF_TUTORIAL_SIZE']}`; "
        f"the machine's 1-minute load average {load} (other work on it slows the run). Every "
        "output below is what that run printed and drew.*"
    )
    _log.info(
        "tutorial %s: %.0f s (load average %s; size %s)",
        script.name,
        result["seconds"],
        load,
        env["IMPLICITDIFF_TUTORIAL_SIZE"],
    )
    figures = []
    for cell in result["cells"]:
        if cell["markdown"]:
            parts += ["", cell["markdown"]]
        if cell["code"]:
            parts += ["", "```python", cell["code"], "```"]
        if cell["output"].strip():
            parts += ["", '```text title="Output"', cell["output"].rstrip(), "```"]
        for name in cell["figures"]:
            parts += ["", f"![{name}]({name})"]
            figures.append(out_dir / name)
    return "\n".join(parts) + "\n", figures


def on_config(config):
    """A link to the repository in every page's footer, from pyproject.toml's Source; the site's
    address from its Documentation URL when that is a published site (not a folder of the
    repository).

    (Not ``repo_url``: with it the theme asks api.github.com for the repository's stars and
    releases from every page, a request that fails offline and for a repository not yet public.)
    """
    extra = config["extra"]
    extra["social"] = [
        {"icon": "fontawesome/brands/github", "link": BASE, "name": "Source code: " + BASE}
    ]
    documentation = _URLS.get("Documentation", "")
    if documentation and not documentation.startswith(BASE):
        config["site_url"] = documentation.rstrip("/") + "/"
    return config


def on_files(files, config):
    """Add the generated pages: home, changelog, tutorials."""
    readme = (ROOT / "README.md").read_text()
    files.append(File.generated(config, "index.md", content=_rewrite_links(readme, "")))
    changelog = (ROOT / "CHANGELOG.md").read_text()
    files.append(File.generated(config, "changelog.md", content=_rewrite_links(changelog, "")))
    for script in sorted((ROOT / "docs" / "tutorials").glob("*.py")):
        out_dir = Path(_TMP.name) / script.stem
        content, figures = _tutorial_page(script, out_dir)
        files.append(File.generated(config, f"tutorials/{script.stem}.md", content=content))
        for fig in figures:
            files.append(File.generated(config, f"tutorials/{fig.name}", abs_src_path=str(fig)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Links from docs/ pages to files elsewhere in the repository point at the repository."""
    if page.file.generated_by is not None:
        return markdown
    page_dir = posixpath.dirname(posixpath.join("docs", page.file.src_uri))
    return _rewrite_links(markdown, page_dir, page_dir)
