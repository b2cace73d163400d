"""Every `docs/design.md §N` the code and docs cite names a section that docs/design.md has."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"docs/design\.md\s+§(\d+)(?:\.(\d+))?")


def test_every_citation_of_the_design_resolves():
    design = (REPO / "docs" / "design.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, flags=re.MULTILINE)}
    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "*.proto"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    cited = 0
    for name in files:
        for match in CITATION.finditer((REPO / name).read_text(errors="replace")):
            section, step = int(match.group(1)), match.group(2)
            assert section in sections, f"{name} cites docs/design.md §{section}, which has no such section"
            if step is not None:  # §4.8: the 8th numbered step of section 4
                body = design.split(f"## {section}. ", 1)[1].split("\n## ", 1)[0]
                assert re.search(rf"^{step}\. ", body, flags=re.MULTILINE), f"{name}: §{section}.{step}"
            cited += 1
    assert cited >= 40  # the code does cite it
    old_name = "DESIGN" + ".md"  # the contract outside the repository, which a clone cannot resolve
    assert not [n for n in files if old_name in (REPO / n).read_text(errors="replace")]
