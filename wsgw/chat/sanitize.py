"""Sanitizing chat messages (PROTOCOL.md §5.2): remove HTML, keep Markdown, on markdown-it-py and nh3.

``sanitize_markdown`` is the rule; ``worth_offloading`` tells when a text may cost
enough CommonMark parsing to be sanitized off the reactor.

Parsing CommonMark with markdown-it-py is superlinear in some constructs (runs
of ``[``, ``<`` and ``![``: 1.1 s for ``"<a>|" + "[" * 7986``), so a text with
more than ``MAX_MARKUP`` of the characters that drive it is not parsed: every
``<`` is escaped instead, which no Markdown reads as HTML (bench/RESULTS.md has
the measured worst cases under the cap).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline, autolink, backtick, html_inline
from markdown_it.token import Token

OFFLOAD_CHARS = 1000  # below this, sanitizing costs at most a few ms even for crafted input
MAX_MARKUP = 200  # of "[<!|*_`" in one text: past it the text is escaped, not parsed (worst case under it: ~15 ms)
_MARKUP = re.compile(r"[\[<!|*_`]")


def worth_offloading(text: str) -> bool:
    """Whether sanitizing ``text`` may take long: it is long and holds markup (``<`` or ``&``)."""
    return len(text) >= OFFLOAD_CHARS and ("<" in text or "&" in text)


_NEWLINES = re.compile(r"\r\n?")
_SURROGATE = re.compile("[\ud800-\udfff]")  # only lone ones reach a str (JSON "\\ud800"); UTF-8 cannot hold them
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")  # where an HTML parser starts a tag, a comment or a declaration
_LT = re.compile("<")
_MARKS = {"`": re.compile("`"), "<": _LT}  # the first character of a code span, of an autolink
_PASSES = 3  # clean-and-reparse rounds before falling back to escaping every "<" (cost: 2 parses each)


def _recording_backtick(state: StateInline, silent: bool) -> bool:
    """markdown-it's code span rule, noting on each code_inline token where in the inline source it was."""
    start, count = state.pos, len(state.tokens)
    found = backtick(state, silent)
    if found and not silent and len(state.tokens) > count and state.tokens[-1].type == "code_inline":
        state.tokens[-1].meta["span"] = (start, state.pos)
    return found


def _recording_autolink(state: StateInline, silent: bool) -> bool:
    """markdown-it's autolink rule (``<https://…>``, ``<user@host>``), noting on the link_open token where in
    the inline source the autolink was."""
    start, count = state.pos, len(state.tokens)
    found = autolink(state, silent)
    if found and not silent:  # (pushing the link may first push the pending text before it)
        for token in state.tokens[count:]:
            if token.type == "link_open" and token.markup == "autolink":
                token.meta["span"] = (start, state.pos)
    return found


def _recording_html_inline(state: StateInline, silent: bool) -> bool:
    """markdown-it's raw HTML rule, noting on the html_inline token where in the inline source it starts."""
    start, count = state.pos, len(state.tokens)
    found = html_inline(state, silent)
    if found and not silent:
        for token in state.tokens[count:]:
            if token.type == "html_inline":
                token.meta["span"] = (start, state.pos)
    return found


def _parser(*extensions: str) -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True}).enable(list(extensions))
    md.inline.ruler.at("backticks", _recording_backtick)
    md.inline.ruler.at("autolink", _recording_autolink)
    md.inline.ruler.at("html_inline", _recording_html_inline)
    return md


# The parsers that decide what is code or an autolink, and what is raw HTML: CommonMark, and CommonMark
# with GFM tables, which most chat clients render and which split a row into cells before finding code
# spans. Text is kept verbatim only where both see code or an autolink, and must hold no raw HTML for
# either. (An autolink renders as a link whose address markdown-it validated: no raw HTML.)
_PARSERS = (_parser(), _parser("table"))


class _Unmapped(Exception):
    """A code span or an autolink could not be located in the source (never seen; handled by cleaning
    everything)."""


def _clean_prose(text: str) -> str:
    """Strip every HTML tag and comment with nh3, then unescape what nh3 escaped, so Markdown
    (``> quote``, ``a < b``, ``&``) reads as typed. Entities typed in the text stay as typed:
    Markdown shows ``&lt;b&gt;`` as the text ``<b>``, no tag. A ``<x`` after the last ``>`` starts
    no HTML (every construct ends with one), yet an HTML parser drops it with what follows as an
    unfinished tag: its ``<`` is kept as ``&lt;``, which renders as typed. Repeat until stable, so text
    that only becomes a tag once cleaned (``<<b>i>``) is cleaned too; if it does not settle, keep
    nh3's escaped (inert) output."""
    for _ in range(4):
        cut = text.rfind(">") + 1
        protected = (text[:cut].replace("&", "&amp;") + _TAG_START.sub("&amp;lt;", text[cut:].replace("&", "&amp;"))
                     ).replace("\x00", "&amp;lt;")  # a '<' _clean_outside found to start no HTML
        cleaned = html.unescape(nh3.clean(protected, tags=set()))
        if cleaned == text:
            return text
        text = cleaned
    return nh3.clean(text, tags=set())


def _verbatim(child: Token, mark: str) -> bool:
    """Whether ``child`` is what ``mark`` starts: a code span for a backtick, an autolink for ``<``."""
    if mark == "`":
        return child.type == "code_inline"
    return child.type == "link_open" and child.markup == "autolink"


def _line_offset(text: str) -> Callable[[int], int]:
    """The offset in ``text`` where a line (markdown-it's ``map`` numbering) starts; past the last, the end."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    return lambda line: starts[line] if line < len(starts) else len(text)


def _ranks(text: str, lines: tuple[int, int], inlines: list[Token],
           pattern: re.Pattern[str]) -> tuple[list[int], list[dict[int, int]]]:
    """Where ``pattern``'s matches stand on the source ``lines`` (offsets ``[start, end)``) of a row of inline
    tokens (a paragraph, a heading, the cells of a table row), and for each token the rank, among them, of each
    match in its content: the n-th match of the row's contents is the n-th of its source lines (see
    ``_code_ranges``). Raises _Unmapped when the counts disagree."""
    source = [m.start() for m in pattern.finditer(text, *lines)]
    indexes: list[dict[int, int]] = []
    at = 0
    for token in inlines:
        index: dict[int, int] = {}
        for m in pattern.finditer(token.content):
            index[m.start()] = at
            at += 1
        indexes.append(index)
    if at > len(source) or (len(inlines) == 1 and at != len(source)):
        raise _Unmapped
    return source, indexes


def _html_starts(text: str, tokens: list[Token]) -> set[int]:
    """The offsets of ``text`` where the parse ``tokens`` sees raw HTML: each ``<`` on the lines of an HTML
    block, and the ``<`` that starts each inline HTML tag, found as ``_code_ranges`` finds autolinks. Raises
    _Unmapped when the source and the parse disagree."""
    offset = _line_offset(text)
    found: set[int] = set()
    rows: dict[tuple[int, int], list[Token]] = {}
    for token in tokens:
        if token.type == "html_block" and token.map is not None:
            found.update(m.start() for m in _LT.finditer(text, offset(token.map[0]), offset(token.map[1])))
        elif token.type == "inline" and any(c.type == "html_inline" for c in token.children or ()):
            if token.map is None:
                raise _Unmapped
            rows.setdefault((token.map[0], token.map[1]), []).append(token)
    for (first, last), inlines in rows.items():
        source, indexes = _ranks(text, (offset(first), offset(last)), inlines, _LT)
        for token, index in zip(inlines, indexes, strict=True):
            for child in token.children or ():
                if child.type == "html_inline":
                    span = child.meta.get("span")
                    if span is None or span[0] not in index:
                        raise _Unmapped
                    found.add(source[index[span[0]]])
    return found


def _code_ranges(text: str, tokens: list[Token]) -> list[tuple[int, int]]:
    """The sorted ``[start, end)`` ranges of ``text`` that the parse ``tokens`` reads as code or as an
    autolink: the lines of fenced and indented code blocks (with their container markers), inline code
    spans and autolinks.

    markdown-it gives blocks their lines but inline tokens no columns: a span's offsets are in its
    inline content, which is its source lines minus container markers, indentation, heading markers,
    cell pipes and surrounding whitespace, none of which holds a backtick or a ``<``. So, going through
    the inline tokens of the same lines (the cells of a table row) in order, the n-th backtick (``<``)
    of their contents is the n-th one of those lines, and a span that starts on it maps back exactly
    (an autolink holds no whitespace, so it stands in its source as in its content)."""
    offset = _line_offset(text)
    ranges: list[tuple[int, int]] = []
    rows: dict[tuple[int, int], list[Token]] = {}
    for token in tokens:
        if token.type in ("fence", "code_block") and token.map is not None:
            ranges.append((offset(token.map[0]), offset(token.map[1])))
        elif token.type == "inline":
            if token.map is None:
                if any(_verbatim(c, "`") or _verbatim(c, "<") for c in token.children or ()):
                    raise _Unmapped
                continue
            rows.setdefault((token.map[0], token.map[1]), []).append(token)  # every cell of a row counts marks
    for (first, last), inlines in rows.items():
        if not any(_verbatim(c, "`") or _verbatim(c, "<") for t in inlines for c in t.children or ()):
            continue
        for mark, pattern in _MARKS.items():
            source, indexes = _ranks(text, (offset(first), offset(last)), inlines, pattern)
            for token, index in zip(inlines, indexes, strict=True):
                for child in token.children or ():
                    if not _verbatim(child, mark):
                        continue
                    span = child.meta.get("span")
                    if span is None or span[0] not in index:
                        raise _Unmapped
                    begin = source[index[span[0]]]
                    if mark == "`":
                        ranges.append((begin, source[index[span[1] - 1]] + 1))
                    else:
                        ranges.append((begin, begin + span[1] - span[0]))
    return sorted(ranges)


def _intersection(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts common to two sorted lists of disjoint ranges."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _has_html(tokens: list[Token]) -> bool:
    """Whether markdown-it would pass raw HTML through when rendering these tokens."""
    return any(
        token.type in ("html_block", "html_inline") or (token.children is not None and _has_html(token.children))
        for token in tokens
    )


def _clean_outside(text: str, ranges: list[tuple[int, int]], html: set[int] | None) -> str:
    """``text`` with everything outside ``ranges`` (sorted, disjoint) cleaned as prose. A ``<`` there that
    starts no HTML for Markdown (not in ``html``; None: unknown, any may) is kept as ``&lt;``, which renders as
    typed: an HTML parser would take ``a<b || c>d`` for a tag and drop it."""
    def prose(start: int, end: int) -> str:
        chunk = text[start:end]
        if html is not None:  # (a '<' no HTML parser takes for a tag, as in 'a < b', stays as it is)
            chunk = _TAG_START.sub(lambda m: "<" if start + m.start() in html else "\x00", chunk)
        return _clean_prose(chunk)

    out: list[str] = []
    at = 0
    for start, end in ranges:
        out.append(prose(at, start))
        out.append(text[start:end])
        at = end
    out.append(prose(at, len(text)))
    return "".join(out)


def sanitize_markdown(text: str) -> str:
    """Remove HTML from a chat message and keep its Markdown intact.

    A CommonMark parser (markdown-it-py; with and without GFM tables) decides
    what is code: code spans, fenced and indented code blocks are kept verbatim,
    since Markdown shows them as literal text (so ``if a<b:`` in code is not
    eaten as a tag). Everything else goes through nh3 (no tag allowed) and is
    unescaped back to Markdown source; a ``<`` where Markdown sees no raw HTML
    (``a<b || c>d``) is kept as ``&lt;`` rather than left to nh3, which would
    take it for a tag. Cleaning can change how the rest parses,
    so the result is parsed again until it is stable and holds no raw HTML;
    text that does not get there in a few rounds, or holds more than
    ``MAX_MARKUP`` markup characters, has every ``<`` escaped, which no Markdown
    reads as HTML. Line endings become ``\\n``, NUL goes, and a lone
    surrogate (which nh3 and UTF-8 cannot take) becomes U+FFFD.
    """
    text = _SURROGATE.sub("\ufffd", _NEWLINES.sub("\n", text.replace("\x00", "")))
    if "<" not in text and "&" not in text:
        return text  # no tag, nothing that unescapes into one: nh3 would change nothing
    if len(_MARKUP.findall(text)) > MAX_MARKUP:
        return text.replace("<", "&lt;")  # too costly to parse (see the module docstring)
    for _ in range(_PASSES):
        # without a '|' there is no table: the GFM parse would be the CommonMark one
        parses = [md.parse(text) for md in (_PARSERS if "|" in text else _PARSERS[:1])]
        try:
            common = _code_ranges(text, parses[0])
            for tokens in parses[1:]:
                common = _intersection(common, _code_ranges(text, tokens))
        except _Unmapped:
            common = []  # clean everything: code may lose a tag, nothing unsafe stays
        try:
            html: set[int] | None = set().union(*(_html_starts(text, tokens) for tokens in parses))
        except _Unmapped:
            html = None  # any '<' may start a tag: nh3 decides
        cleaned = _clean_outside(text, common, html)
        if cleaned == text and not any(_has_html(tokens) for tokens in parses):
            return text
        text = cleaned
    return text.replace("<", "&lt;")
