"""Each ``kvgate serve`` / ``kvgate epp`` option whose help sends the reader to a doc (``docs/X.md``,
optionally ``"Section"``) is described there: the doc (that section, when named) names the option
(review s15-fixes-a I3: ``kvgate serve --model-series-grace``'s help pointed to docs/multicluster.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvgate.extproc.cli import parser as epp_parser
from kvgate.gateway.cli import _parser as serve_parser

ROOT = Path(__file__).resolve().parents[1]
_CITE = re.compile(r'(docs/[\w./-]+\.md)(?: "([^"]+)")?')


def _section(text: str, title: str) -> str:
    """The text under the heading ``title`` (any level) up to the next heading of the same or a higher
    level; empty when no heading has that title."""
    lines = text.splitlines()
    # (a line in a fenced code block is no heading: a shell block's ``# comment``; review s16-hard I3)
    fenced, inside = [], False
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")):
            inside = not inside
            fenced.append(True)
        else:
            fenced.append(inside)
    for i, line in enumerate(lines):
        m = re.match(r"(#+) (.*)", line)
        if m and not fenced[i] and m.group(2).strip() == title:
            level, out = len(m.group(1)), []
            for j in range(i + 1, len(lines)):
                h = re.match(r"(#+) ", lines[j])
                if h and not fenced[j] and len(h.group(1)) <= level:
                    break
                out.append(lines[j])
            return "\n".join(out)
    return ""


def test_a_section_runs_past_a_fenced_blocks_comment() -> None:
    """Review s16-hard I3: a ``# comment`` in a fenced shell block ended the section (a false failure) or
    matched a title."""
    text = "## Commands\nintro\n```sh\n# Commands\nkvgate serve\n```\nthe option described\n## Next\nrest\n"
    assert "the option described" in _section(text, "Commands")
    assert "rest" not in _section(text, "Commands")
    assert _section("```sh\n# Other\ntext\n```\n", "Other") == ""


def _cited() -> list[tuple[str, str, str, str]]:
    out = []
    for name, p in (("serve", serve_parser()), ("epp", epp_parser())):
        for action in p._actions:
            for doc, section in _CITE.findall(action.help or ""):
                for opt in action.option_strings:
                    if opt.startswith("--"):
                        out.append((name, opt, doc, section))
    return out


def test_options_cite_docs() -> None:
    cited = {(name, opt) for name, opt, _d, _s in _cited()}
    assert ("serve", "--model-series-grace") in cited and ("epp", "--model-series-grace") in cited


@pytest.mark.parametrize(("command", "option", "doc", "section"), _cited())
def test_a_cited_doc_names_the_option(command: str, option: str, doc: str, section: str) -> None:
    path = ROOT / doc
    assert path.is_file(), f"kvgate {command} {option}: {doc} does not exist"
    text = path.read_text()
    if section:
        text = _section(text, section)
        assert text, f'kvgate {command} {option}: {doc} has no section "{section}"'
    assert option in text, f"kvgate {command} {option}: {doc} {section!r} does not name it"
