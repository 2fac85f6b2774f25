"""Keep the results quoted in the READMEs equal to the results files the benchmarks write.

A README quotes a results file between two markers, the whole file or one of its tables with its caption (counted
from 1 in the order the file has them; a table is a paragraph of lines that start with ``|``, its caption the
paragraph right above it unless that is a heading or another table):

    <!-- results: benchmarks/results/medgen3d.md -->
    ...the file's text, as the benchmark wrote it...
    <!-- end results -->

    <!-- results: benchmarks/results/image_variants.md table 2 -->
    ...
    <!-- end results -->

``update`` writes every quoted block again from its file; ``check`` lists the blocks that differ from their files (or
name a missing file or table) and exits 1 if there is one, which the test suite runs, so a figure typed by hand, or
one left behind by a rerun, fails CI:

    .venv/bin/python benchmarks/quote_results.py update
    .venv/bin/python benchmarks/quote_results.py check
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "bundles/*/docs/README.md")
START = re.compile(r"^<!-- results: (?P<path>\S+)(?: table (?P<table>\d+))? -->$")
END = "<!-- end results -->"


class Quote(NamedTuple):
    """One quoted block: the lines between its markers in ``doc`` (0-based, end exclusive)."""

    doc: Path
    source: str  # the results file, relative to the repository
    table: int | None
    first: int
    last: int


def docs(root: Path = ROOT) -> list[Path]:
    """The READMEs that may quote results."""
    return sorted(path for pattern in DOCS for path in root.glob(pattern))


def quotes(doc: Path) -> list[Quote]:
    """Every quoted block of ``doc``; a start marker without its end is an error naming the line."""
    lines = doc.read_text().split("\n")
    found, open_at = [], None
    for number, line in enumerate(lines):
        match = START.match(line.strip())
        if match:
            if open_at is not None:
                raise SystemExit(f"{doc}:{open_at[0] + 1}: a results quote without its '{END}'")
            open_at = (number, match["path"], int(match["table"]) if match["table"] else None)
        elif line.strip() == END:
            if open_at is None:
                raise SystemExit(f"{doc}:{number + 1}: '{END}' without a start marker")
            found.append(Quote(doc, open_at[1], open_at[2], open_at[0] + 1, number))
            open_at = None
    if open_at is not None:
        raise SystemExit(f"{doc}:{open_at[0] + 1}: a results quote without its '{END}'")
    return found


def tables(text: str) -> list[list[str]]:
    """The Markdown tables of ``text``, each as its lines, after its caption: the paragraph right above it (one
    blank line between), unless that is a heading or another table."""
    blocks = [block.split("\n") for block in re.split(r"\n\s*\n", text.strip("\n"))]
    out = []
    for i, block in enumerate(blocks):
        if not all(line.startswith("|") for line in block):
            continue
        above = blocks[i - 1] if i else None
        caption = above is not None and not above[0].startswith(("|", "#"))
        out.append([*above, "", *block] if caption else block)
    return out


def expected(quote: Quote, root: Path = ROOT) -> list[str]:
    """What the block must hold: the file's text (without its last newline) or its table."""
    path = root / quote.source
    where = f"{quote.doc.relative_to(root)}:{quote.first}"
    if not path.is_file():
        raise LookupError(f"{where}: quotes {quote.source}, which does not exist")
    text = path.read_text().rstrip("\n")
    if quote.table is None:
        return text.split("\n")
    found = tables(text)
    if not 1 <= quote.table <= len(found):
        raise LookupError(f"{where}: quotes table {quote.table} of {quote.source}, which has {len(found)}")
    return found[quote.table - 1]


def check(root: Path = ROOT) -> list[str]:
    """One line per quoted block that differs from its file."""
    problems = []
    for doc in docs(root):
        lines = doc.read_text().split("\n")
        for quote in quotes(doc):
            try:
                want = expected(quote, root)
            except LookupError as error:
                problems.append(str(error))
                continue
            if lines[quote.first : quote.last] != want:
                problems.append(
                    f"{doc.relative_to(root)}:{quote.first}: differs from {quote.source}"
                    + (f" table {quote.table}" if quote.table else "")
                    + "; run `benchmarks/quote_results.py update`"
                )
    return problems


def update(root: Path = ROOT) -> None:
    """Write every quoted block again from its file (later blocks first, so earlier line numbers hold); a block whose
    file or table is missing is left as it is and named, in one line each, when the rest is written."""
    problems = []
    for doc in docs(root):
        lines = doc.read_text().split("\n")
        for quote in reversed(quotes(doc)):
            try:
                lines[quote.first : quote.last] = expected(quote, root)
            except LookupError as error:
                problems.append(str(error))
        doc.write_text("\n".join(lines))
    if problems:
        raise SystemExit("\n".join(sorted(problems)))


def main(argv: list[str]) -> int:
    if argv[1:] == ["update"]:
        update()
        return 0
    if argv[1:] == ["check"]:
        problems = check()
        print("\n".join(problems) or "every quoted result matches its file")
        return 1 if problems else 0
    print("usage: quote_results.py update|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
