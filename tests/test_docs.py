"""The documents inside the repository hold together: citations, links, front-page length.

Code, tests and docs cite the specification of the authors' implementation as
`reference.md §3.7` (or a range, `§3.4-3.5`); each cited number must be a numbered heading of
docs/reference.md. No source file may point at a document that a clone does not contain, and
no Markdown link may lead to a missing file or out of the repository. Plain text only: this file
imports neither JAX nor TensorFlow and runs in well under a second.
"""

import pathlib
import re
import urllib.parse
from typing import Iterator, List, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
# Folders whose files must not depend on anything outside the repository.
SOURCE_DIRS = ("htt_jax", "data_pipeline", "scripts", "configs", "tests", "benchmarks")
SOURCE_FILES = ("Makefile", "setup.cfg", "pyproject.toml")
TEXT_SUFFIXES = (".py", ".md", ".txt", ".cfg", ".toml", ".ini", ".sh", ".yaml", ".yml")
README_MAX_LINES = 250

# The section numbers of the reference: an index shared with every citation in the code, so a
# heading may be reworded but never renumbered or dropped.
EXPECTED_SECTIONS = (
    ["0", "1", "2", "3", "4", "5", "6"]
    + [f"1.{i}" for i in range(1, 10)] + [f"2.{i}" for i in range(1, 7)]
    + [f"3.{i}" for i in range(1, 8)] + [f"5.{i}" for i in range(1, 3)]
    + [f"6.{i}" for i in range(1, 27)])

_NUMBER = r"\d+(?:\.\d+)?"
# `§3.7`, `§ 3.7`, `§3.4-3.5`, `§3.4–3.5`; "paper §2" cites the paper, not reference.md.
_CITATION = re.compile(rf"(?<!paper )(?<!Paper )§\s?({_NUMBER})(?:\s?[-–]\s?({_NUMBER}))?")
_HEADING = re.compile(rf"^#{{1,6}}\s+({_NUMBER})\.?\s")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
_LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# Built from pieces so that this file does not match its own patterns.
_OUTSIDE_DOCUMENTS = ("DESIGN" + ".md", "htt" + "_facts", ".." + "/shared", "facts" + " sheet")
# The old citation forms: the word for the old sheet, or "decision", then a section number.
_OLD_CITATION = re.compile(
    r"\b(?:" + "fact" + r"s?(?:\s+section)?|" + "decision" + r"s?)\s+\d+(?:\.\d+)?", re.IGNORECASE)


def _files_under(folder: pathlib.Path) -> Iterator[pathlib.Path]:
  for path in sorted(folder.rglob("*")):
    parts = path.relative_to(folder).parts
    if any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info") for p in parts):
      continue
    if path.is_file() and path.suffix in TEXT_SUFFIXES:
      yield path


def source_files(root: pathlib.Path = ROOT) -> List[pathlib.Path]:
  files = [p for d in SOURCE_DIRS if (root / d).is_dir() for p in _files_under(root / d)]
  return files + [root / f for f in SOURCE_FILES if (root / f).is_file()]


def markdown_files(root: pathlib.Path = ROOT) -> List[pathlib.Path]:
  docs = root / "docs"
  pages = sorted(docs.rglob("*.md")) if docs.is_dir() else []
  return ([root / "README.md"] if (root / "README.md").is_file() else []) + pages


def _prose_lines(text: str) -> Iterator[Tuple[int, str]]:
  """(line number, line) of a Markdown text outside fenced code blocks."""
  fenced = False
  for number, line in enumerate(text.splitlines(), start=1):
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      yield number, line


def reference_sections(reference: pathlib.Path = REFERENCE) -> List[str]:
  """The numbers of the numbered headings of reference.md, in document order."""
  text = reference.read_text(encoding="utf-8")
  return [m.group(1) for _, line in _prose_lines(text) for m in [_HEADING.match(line)] if m]


def unresolved_citations(paths, sections) -> List[str]:
  """'file:line: §X' for every cited section number (each end of a range) with no heading."""
  known, bad = set(sections), []
  for path in paths:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
      for match in _CITATION.finditer(line):
        for cited in filter(None, match.groups()):
          if cited not in known:
            bad.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:"
                       f"{number}: §{cited}")
  return bad


def count_citations(paths) -> int:
  return sum(len(_CITATION.findall(p.read_text(encoding="utf-8"))) for p in paths)


def broken_links(pages, root: pathlib.Path = ROOT) -> List[str]:
  """'page:line: target' for relative links to a missing file or to a place outside `root`."""
  bad = []
  for page in pages:
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
      line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
      targets = _INLINE_LINK.findall(line) + _LINK_DEFINITION.findall(line)
      for target in targets:
        if not target or target.startswith("#") or _SCHEME.match(target):
          continue
        path = urllib.parse.unquote(re.split(r"[#?]", target, maxsplit=1)[0])
        resolved = (root / path.lstrip("/") if path.startswith("/")
                    else page.parent / path).resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
          bad.append(f"{page.relative_to(root)}:{number}: {target}")
  return bad


def test_reference_keeps_the_section_numbers():
  sections = reference_sections()
  duplicates = sorted({s for s in sections if sections.count(s) > 1})
  assert not duplicates, f"numbered twice in docs/reference.md: {duplicates}"
  assert sorted(sections) == sorted(EXPECTED_SECTIONS), (
      f"missing: {sorted(set(EXPECTED_SECTIONS) - set(sections))}, "
      f"unexpected: {sorted(set(sections) - set(EXPECTED_SECTIONS))}")


def test_every_citation_names_a_heading_of_the_reference():
  sources = source_files()
  assert count_citations(_files_under(ROOT / "htt_jax")) > 0, "htt_jax cites reference.md nowhere"
  bad = unresolved_citations(sources + markdown_files(), reference_sections())
  assert not bad, "citations with no heading in docs/reference.md:\n" + "\n".join(bad)


def test_sources_point_to_no_document_outside_the_repository():
  bad = []
  for path in source_files():
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
      found = [name for name in _OUTSIDE_DOCUMENTS if name in line]
      found += [m.group(0) for m in _OLD_CITATION.finditer(line)]
      if found:
        bad.append(f"{path.relative_to(ROOT)}:{number}: {', '.join(found)}")
  assert not bad, ("out-of-repo documents or old citation forms (cite `reference.md §X.Y`, "
                   "`docs/architecture.md`):\n" + "\n".join(bad))


def test_docs_use_no_old_citation_form():
  bad = [f"{page.relative_to(ROOT)}:{number}: {m.group(0)}"
         for page in markdown_files()
         for number, line in _prose_lines(page.read_text(encoding="utf-8"))
         for m in _OLD_CITATION.finditer(line)]
  assert not bad, "old citation forms (write `reference.md §X.Y`):\n" + "\n".join(bad)


def test_relative_links_in_the_docs_lead_to_files():
  bad = broken_links(markdown_files())
  assert not bad, "links to missing files or out of the repository:\n" + "\n".join(bad)


def test_readme_is_a_front_page():
  lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
  assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}"


def test_the_checks_catch_a_broken_citation_and_a_broken_link(tmp_path):
  # The checks above pass vacuously if their patterns never match; prove they can fail.
  reference = tmp_path / "reference.md"
  reference.write_text("# Spec\n## 1. One\n### 1.1 Sub\n```\n## 9. In code, not a heading\n```\n")
  assert reference_sections(reference) == ["1", "1.1"]
  code = tmp_path / "module.py"
  cite = "reference.md " + "\N{SECTION SIGN}"  # not written out: this file is scanned too
  code.write_text(f"x = 1  # {cite}1.1, {cite[-1]}1 and {cite[-1]}1-1.1\ny = 2  # {cite}9.9\n"
                  f"z = 3  # docs/{cite}1.1\u20139.8 (paper {cite[-1]}4 is not ours)\n")
  assert unresolved_citations([code], reference_sections(reference)) == [
      f"{code}:2: {cite[-1]}9.9", f"{code}:3: {cite[-1]}9.8"]
  page = tmp_path / "page.md"
  (tmp_path / "there.md").write_text("x\n")
  page.write_text("[ok](there.md#part) [web](https://example.com) [top](#top) `[no](code.md)`\n"
                  "[missing](gone.md) ![img](img/none.png)\n[out](../elsewhere.md)\n"
                  "[ref]: there.md\n```\n[in code](nowhere.md)\n```\n")
  assert broken_links([page], root=tmp_path) == [
      "page.md:2: gone.md", "page.md:2: img/none.png", "page.md:3: ../elsewhere.md"]
  old = "fact" + "s"
  for text in (f"see {old} 3.7", f"({old} 4)", f"{old.title()} section 6", "decision" + " 6.12"):
    assert _OLD_CITATION.search(text), text
  assert not _OLD_CITATION.search("test_state_dict_matches_facts(model)")

