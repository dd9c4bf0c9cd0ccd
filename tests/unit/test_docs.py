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


def _tutorial_commands(page: Path) -> list[str]:
    """The command lines of a tutorial's ```bash blocks, comments stripped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        lines += [cmd for line in block.splitlines() if (cmd := line.split("#")[0].strip())]
    return lines


def test_every_command_of_a_tutorial_is_one_that_exists():
    """Each `mlioc ...` line parses with the real command line, each `scripts/...` is a script of the checkout and
    `scripts/demo` takes its argument (a walkthrough a newcomer types on a fresh clone)."""
    import shlex

    parser = build_parser()
    demo = (ROOT / "scripts" / "demo").read_text()
    bad = []
    for page in sorted((ROOT / "docs" / "tutorials").glob("*.md")):
        commands = _tutorial_commands(page)
        assert commands, page.name
        for cmd in commands:
            words = shlex.split(cmd)
            if words[0] == "mlioc":
                try:
                    parser.parse_args(words[1:])
                except SystemExit:
                    bad.append(f"{page.name}: {cmd}")
            elif words[0].startswith("scripts/"):
                if not (ROOT / words[0]).is_file():
                    bad.append(f"{page.name}: {cmd} (no such script)")
                elif words[0] == "scripts/demo" and len(words) > 1 and f"\n  {words[1]})" not in demo:
                    bad.append(f"{page.name}: {cmd} (scripts/demo has no {words[1]!r})")
    assert not bad, bad


def test_the_arrays_tutorial_names_only_pvs_the_array_demo_serves():
    from ioc.core.configfile import load_config
    from ioc.core.layout import model_pv_names
    from ioc.sim.server import sim_pv_names

    config = load_config(ROOT / "config" / "demo-arrays.yaml")
    assert config.simulator is not None
    served = {n for m in config.models for n in model_pv_names(m)} | set(sim_pv_names(config.simulator.prefix))
    named = set(re.findall(r"\b(?:DEMO|SIM):[A-Za-z0-9_:]*[A-Za-z0-9_]", (ROOT / "docs" / "tutorials" / "arrays.md")
                           .read_text()))
    prefixes = {p.rstrip(":") for p in (*(m.prefix for m in config.models), config.simulator.prefix)}
    assert len(named - prefixes) >= 20
    assert named - prefixes <= served, sorted(named - prefixes - served)
