"""The documentation names only what exists: every relative link resolves, no page points at a file the
repository does not have, and every `mlioc` command is in the command-line reference."""

from __future__ import annotations

import re
from pathlib import Path

from ioc.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for match in re.finditer(r"\]\(([^)\s]+)\)", page.read_text()):
            target = match.group(1).split("#")[0]
            if target and not target.startswith(("http://", "https://", "mailto:")) \
                    and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {match.group(1)}")
    assert not broken, broken


def test_no_page_or_module_points_at_a_design_document_the_repository_does_not_have():
    files = [*PAGES, *ROOT.glob("ioc/**/*.py"), *ROOT.glob("training/**/*.py"), *ROOT.glob("tests/**/*.py")]
    named = [str(f.relative_to(ROOT)) for f in files if f.name != Path(__file__).name and "DESIGN.md" in f.read_text()]
    assert not named, named


def test_every_command_is_in_the_cli_reference():
    reference = (ROOT / "docs" / "reference" / "cli.md").read_text()
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]  # noqa: SLF001 - argparse's own API
    missing = [name for name in sub.choices if f"`mlioc {name}" not in reference]
    assert not missing, f"commands missing from docs/reference/cli.md: {missing}"
