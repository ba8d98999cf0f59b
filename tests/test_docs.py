"""What README.md, docs/ and benchmarks/README.md point at exists: files, links, commands
(fst commands and `python -m benchmarks....` modules) and their flags.
A reader follows these by hand; a renamed file or flag must fail here, not on them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "DEVELOPERS.md", *sorted((REPO / "docs").glob("*.md"))]
PAGES += [REPO / "benchmarks" / "README.md"]
# Top-level folders whose paths a page may name (`benchmarks/results/x.md`, `data/...`).
ROOTS = ("benchmarks/", "data/", "deploy/", "docs/", "export/", "fst/", "runtime/", "serving/")
ROOTS += ("tests/", ".ci/")
# Paths a command creates (they are outputs in the text, not files of the repository).
MADE_BY_COMMANDS = ("data/experiments", "data/bundles", "data/models")
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def code_spans(text: str) -> list[str]:
    """Inline code and the lines of fenced blocks."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return inline + [line for block in fenced for line in block.splitlines()]


def named_paths(text: str) -> set[str]:
    paths = set()
    for span in code_spans(text):
        for token in re.split(r"[\s=\"'(),]+", span):
            token = token.split("::")[0].rstrip(".:;")  # a pytest node id names its file
            if token.startswith(ROOTS) and not any(c in token for c in "*{}<>$|"):
                paths.add(token)
    return paths


def expand_braces(path: str) -> list[str]:
    """`a-{x,y}.md` -> `a-x.md`, `a-y.md` (the shell's brace expansion, as the pages use it)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [p for part in match[1].split(",") for p in expand_braces(head + part + tail)]


def result_paths(text: str) -> set[str]:
    """Every `results/...` file a page names, in prose and code alike, braces expanded;
    placeholders (`results/<what it measures>.md`) are not files."""
    found = re.findall(r"(?:benchmarks/)?results/[\w.{},/-]*[\w}](?![<\w{/-]|\.\w)", text)
    return {p for path in found for p in expand_braces(path)}


def links(text: str) -> set[str]:
    return {
        target.split("#")[0]
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not target.startswith(("http://", "https://", "#", "mailto:"))
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_and_link_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = [
        path
        for path in sorted(named_paths(text))
        if not path.startswith(MADE_BY_COMMANDS) and not (REPO / path).exists()
    ]
    missing += [link for link in sorted(links(text)) if link and not (page.parent / link).exists()]
    assert not missing, f"{page.name} names what does not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_result_file_a_page_names_exists(page: Path) -> None:
    """Every figure comes from a file in benchmarks/results/: the file a page cites must be
    there (under its current name), wherever the page names it."""
    text = page.read_text(encoding="utf-8")
    base = {True: REPO, False: REPO / "benchmarks"}
    missing = sorted(
        path
        for path in result_paths(text)
        if not (base[path.startswith("benchmarks/")] / path).exists()
    )
    assert not missing, f"{page.name} cites result files that do not exist: {missing}"


def test_benchmarks_readme_lists_every_result() -> None:
    """Every report in benchmarks/results/ answers a question of the benchmarks' table."""
    listed = result_paths((REPO / "benchmarks" / "README.md").read_text(encoding="utf-8"))
    reports = {f"results/{p.name}" for p in (REPO / "benchmarks" / "results").glob("*.md")}
    assert not reports - listed, f"not in benchmarks/README.md: {sorted(reports - listed)}"


def test_result_paths_are_found_in_prose_and_expanded() -> None:
    text = "see benchmarks/results/a-{x,y}.md, and `results/b.json`; results/c-<seed>.md."
    assert result_paths(text) == {
        "benchmarks/results/a-x.md",
        "benchmarks/results/a-y.md",
        "results/b.json",
    }


def commands_with_flags() -> dict[str, set[str]]:
    """Each command the pages run, and the --flags given to it: the fst commands by name,
    the benchmarks as `python -m benchmarks.<group>.<name>` (keyed by the module)."""
    used: dict[str, set[str]] = {}
    for page in PAGES:
        for span in code_spans(page.read_text(encoding="utf-8")):
            for part in re.split(r"&&|\|\||;|\|", span):
                words = part.split()
                if words[:2] in (["python", "-m"], ["python3", "-m"]) and len(words) > 2:
                    words = words[2:]
                if words and (words[0] in SCRIPTS or re.fullmatch(r"benchmarks(\.\w+)+", words[0])):
                    flags = {w.split("=")[0] for w in words[1:] if w.startswith("--")}
                    used.setdefault(words[0], set()).update(flags)
    return used


BENCHMARKS = sorted(name for name in commands_with_flags() if name.startswith("benchmarks."))


@cache
def help_text(command: str) -> str:
    if command.startswith("benchmarks."):
        argv = [sys.executable, "-m", command]  # from the repository root, as the pages say
    else:
        executable = shutil.which(command, path=str(Path(sys.executable).parent))
        assert executable, f"{command}: not installed beside {sys.executable}"
        argv = [executable]
    result = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, timeout=300, check=False, cwd=REPO
    )
    assert result.returncode == 0, f"{command} --help failed: {result.stderr[-500:]}"
    return result.stdout


def test_the_pages_run_fst_commands() -> None:
    assert {"fst-train", "fst-export", "fst-serve"} <= set(commands_with_flags())
    assert {"benchmarks.latency.run", "benchmarks.serving.load"} <= set(BENCHMARKS)


@pytest.mark.parametrize("command", sorted(SCRIPTS) + BENCHMARKS)
def test_every_flag_the_pages_use_is_in_the_commands_help(command: str) -> None:
    flags = commands_with_flags().get(command, set())
    text = help_text(command)
    unknown = sorted(flag for flag in flags if flag not in text)
    assert not unknown, f"{command} --help does not know {unknown}"
