"""Every citation of the reference notes resolves to a heading of docs/reference.md.

Code, tests and docs justify choices by citing the released code's behaviour as "reference-impl §X.Y" (or "Ref
§X.Y" in docs/fidelity.md) and its assertions as "check vector N" (or "CV N", also as lists and ranges such as
"check vectors 3-6, 11"). docs/reference.md is where a reader follows them, so a citation that names a section or
check vector the page lacks is a broken link: this test lists each one by file and line. No model is loaded.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "docs/reference.md"
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}
N_CHECK_VECTORS = 30

# A section number: "4", "4.6", "11.18", "5.7a". The trailing letter must not run into a word ("§4 and").
_SECTION = r"\d+(?:\.\d+)*(?:[a-z]\b)?"
# "reference-impl §4.6", "reference-impl §4.5, §5.5, §5.6" (a line break may sit anywhere between the parts).
SECTION_CITATION = re.compile(rf"\b(?:reference-impl|Ref)\s+§({_SECTION}(?:\s*(?:,|;|and)\s*§{_SECTION})*)")
# "check vector 24", "check vectors 7, 10,\n14-16, 19", "check vectors 3 and 11", "CV 5, 6". A list may continue on
# the next line of a comment, hence the optional "#" in a separator.
_NUMBER_LIST = r"\d+(?:\s*(?:,|and|[-–])\s*(?:#\s*)?\d+)*"
VECTOR_CITATION = re.compile(rf"(?:\b[Cc]heck vectors?|\bCVs?)\s+({_NUMBER_LIST})")

SECTION_HEADING = re.compile(r"^#{2,4} §(" + _SECTION + r")\s", re.MULTILINE)
VECTOR_HEADING = re.compile(r"^#{2,4} Check vector (\d+) — \S", re.MULTILINE)


def expand_numbers(text: str) -> list[int]:
    """The check-vector numbers of a list such as "3-6, 11 and 14": ranges expanded, in order of mention."""
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|and)\s*", text.replace("#", " ")):
        bounds = [int(b) for b in re.split(r"\s*[-–]\s*", part.strip()) if b]
        if len(bounds) == 2:
            numbers.extend(range(bounds[0], bounds[1] + 1))
        else:
            numbers.extend(bounds)
    return numbers


def find_citations(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """Section citations as (line, "4.6") and check-vector citations as (line, 24) found in ``text``.

    The line is where the citation starts, so a list broken over two lines is reported at its first line.
    """
    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    sections = [(line_of(m.start()), number) for m in SECTION_CITATION.finditer(text)
                for number in re.findall(_SECTION, m.group(1))]
    vectors = [(line_of(m.start()), number) for m in VECTOR_CITATION.finditer(text)
               for number in expand_numbers(m.group(1))]
    return sections, vectors


def dangling(files: dict[str, str], reference: str) -> list[str]:
    """``path:line: citation`` for every citation in ``files`` (path → text) with no heading in ``reference``."""
    sections = set(SECTION_HEADING.findall(reference))
    vectors = {int(n) for n in VECTOR_HEADING.findall(reference)}
    problems = []
    for path, text in sorted(files.items()):
        cited_sections, cited_vectors = find_citations(text)
        found = [(line, f"§{number}") for line, number in cited_sections if number not in sections]
        found += [(line, f"check vector {number}") for line, number in cited_vectors if number not in vectors]
        problems += [f"{path}:{line}: {what}" for line, what in sorted(found, key=lambda item: item[0])]
    return problems


def repository_texts() -> dict[str, str]:
    """The repository's text files that may cite the reference: tracked plus new not-ignored ones, minus the page."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the citations are checked in the repository only")
    paths = sorted({p for p in listed if Path(p).suffix in SUFFIXES and p != REFERENCE and (ROOT / p).is_file()})
    return {p: (ROOT / p).read_text(encoding="utf-8", errors="replace") for p in paths}


def reference_text() -> str:
    return (ROOT / REFERENCE).read_text(encoding="utf-8")


# --- the parser, on small strings -------------------------------------------------------------------------------
# The citations below are assembled at run time so that this file itself cites nothing.
R, CV = "reference-impl", "check vector"


def test_parser_reads_every_citation_form():
    text = (f"a ({R} §4.6, §6.2) and ({R}\n§11.18); {CV} 24\n"
            f"({CV}s 7, 10,\n14-16, 19) # {CV}s 3 and 11, {CV}s 21–22\n"
            "(Ref §5.7a; CV 5, 6). Not cited: paper §3.2, env-notes §4.")
    sections, vectors = find_citations(text)
    assert sections == [(1, "4.6"), (1, "6.2"), (1, "11.18"), (5, "5.7a")]
    assert vectors == [(2, 24), (3, 7), (3, 10), (3, 14), (3, 15), (3, 16), (3, 19), (4, 3), (4, 11),
                       (4, 21), (4, 22), (5, 5), (5, 6)]


def test_parser_stops_at_the_end_of_a_citation():
    """A sentence ending right after a number, or a number that is not part of the list, is not swallowed."""
    sections, vectors = find_citations(f"see {R} §4. Then {CV} 26), best-of (28); {R} §4 and §5 of the paper.")
    assert sections == [(1, "4"), (1, "4"), (1, "5")]
    assert vectors == [(1, 26)]


def test_dangling_citations_are_reported_with_file_and_line():
    reference = "## §4 IMP\n\n### §4.6 Data\n\n### Check vector 3 — OMP\n\n### Check vector 4 — random\n"
    files = {"ok.py": f'"""{R} §4.6, {CV}s 3 and 4."""\n',
             "bad.py": f"x = 1\n# {R} §4.7 and {R} §12\n# {CV}s 3-5\n"}
    assert dangling(files, reference) == ["bad.py:2: §4.7", "bad.py:2: §12", "bad.py:3: check vector 5"]


# --- the repository ---------------------------------------------------------------------------------------------


def test_every_citation_names_a_heading_of_the_reference():
    problems = dangling(repository_texts(), reference_text())
    assert not problems, f"citations with no heading in {REFERENCE}:\n" + "\n".join(problems)


def test_the_repository_cites_the_reference():
    """Guards the test above against a parser that silently finds nothing."""
    files = repository_texts()
    found = [find_citations(text) for text in files.values()]
    assert sum(len(sections) for sections, _ in found) > 50
    assert sum(len(vectors) for _, vectors in found) > 20


def test_reference_has_each_check_vector_once():
    numbers = [int(n) for n in VECTOR_HEADING.findall(reference_text())]
    assert sorted(numbers) == list(range(1, N_CHECK_VECTORS + 1)), sorted(numbers)


def test_reference_section_headings_are_unique():
    numbers = SECTION_HEADING.findall(reference_text())
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
    assert {str(n) for n in range(1, 13)} <= set(numbers)  # the twelve top-level sections
