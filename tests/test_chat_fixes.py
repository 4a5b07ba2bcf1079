"""Regression tests for three chat bugs found in review: the Markdown sanitizer letting raw HTML through
where CommonMark disagrees with hand-written code detection, a JOIN or HISTORY racing a re-subscribe,
and presence removals still in flight when the service stops."""

from __future__ import annotations

import re
from collections.abc import Callable
from html import unescape
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.test_chat_rooms import START, WS, LoopBus, frames, history, join, kinds, ping, post
from wsgw.access import Access
from wsgw.chat.rooms import ChatService, sanitize_markdown
from wsgw.chat.store import IChatStore, MemoryChatStore
from wsgw.sessions import Session
from wsgw.testing import RecordingConnection

# --------------------------------------------------------------------------- 1. sanitizer

# CommonMark, and CommonMark with GFM tables (what most chat clients render: a table row is split into
# cells before code spans are found, so code can end where plain CommonMark sees it go on).
_RENDERERS = {
    "commonmark": MarkdownIt("commonmark", {"html": True}),
    "gfm-tables": MarkdownIt("commonmark", {"html": True}).enable("table"),
}

# The tags Markdown itself emits, with the attributes it puts on them. Raw HTML is the only way
# anything else (or an on* attribute) reaches the rendered page. <img> is allowed because
# ``![alt](src)`` is Markdown, not HTML: it carries only src, alt and title.
_MARKDOWN_TAGS: dict[str, set[str]] = {
    **{tag: set() for tag in ("table", "thead", "tbody", "tr")},
    "th": {"style"},  # style="text-align:..." from the delimiter row
    "td": {"style"},
    **{tag: set() for tag in ("p", "em", "strong", "pre", "ul", "li", "blockquote", "hr", "br",
                              "h1", "h2", "h3", "h4", "h5", "h6")},
    "code": {"class"},  # class="language-x" from a fence's info string
    "ol": {"start"},
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
}
_BAD_URL = re.compile(r"^\s*(javascript|vbscript|file|data(?!:image/(gif|png|jpeg|webp);)):", re.IGNORECASE)


class _TagAudit(HTMLParser):
    """Collects every tag, attribute, comment and declaration of rendered HTML that Markdown does not emit."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        allowed = _MARKDOWN_TAGS.get(tag)
        if allowed is None:
            self.bad.append(f"<{tag}>")
            return
        for name, value in attrs:
            if name not in allowed:
                self.bad.append(f"<{tag} {name}=...>")
            elif name in ("href", "src") and value is not None and _BAD_URL.match(unescape(value)):
                self.bad.append(f"<{tag} {name}={value!r}>")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag not in _MARKDOWN_TAGS:
            self.bad.append(f"</{tag}>")

    def handle_comment(self, data: str) -> None:
        self.bad.append("<!--...-->")

    def handle_decl(self, decl: str) -> None:
        self.bad.append("<!...>")

    def handle_pi(self, data: str) -> None:
        self.bad.append("<?...>")

    def unknown_decl(self, data: str) -> None:
        self.bad.append("<![...]>")


def _foreign_html(markdown: str) -> list[str]:
    """What the Markdown renders to, by either renderer, that Markdown itself would not emit."""
    bad = []
    for name, renderer in _RENDERERS.items():
        audit = _TagAudit()
        audit.feed(renderer.render(markdown))
        audit.close()
        bad += [f"{name}: {tag}" for tag in audit.bad]
    return bad


@pytest.mark.parametrize("text", [
    "\\`<img src=x onerror=alert(1)>`",
    "1. item\n   ```\n\n<img src=x onerror=alert(1)>",
    "- item\n  ~~~\n\n<script>alert(1)</script>",
    "> ```\n> code\n\n<img src=x onerror=alert(1)>",
    "`a\\`<img src=x onerror=alert(1)>`",
    "    indented\n<img src=x onerror=alert(1)>",
    "`a | b` `<img src=x onerror=alert(1)>`\n|-|-|",
])
def test_raw_html_where_commonmark_sees_no_code_is_removed(text: str) -> None:
    """Raw HTML that the old regexes mistook for code (escaped backticks, fences closed by the end of
    their list item or quote, a table row cut into cells across a code span) is removed: the
    sanitized text renders without it."""
    assert _foreign_html(text), "the case must render raw HTML unsanitized"
    cleaned = sanitize_markdown(text)
    assert _foreign_html(cleaned) == [], cleaned
    assert "onerror" not in cleaned and "<script" not in cleaned


@pytest.mark.parametrize("text", [
    "**bold** and _it_",
    "- one\n- two\n  - nested",
    "1. first\n2. second",
    "> a quote\n> more\n\nafter",
    "a < b and c > d",
    "use `if a < b:` or ``x<y`` here",
    "```python\nif a<b: print('<b>')\n```",
    "1. item\n   ```\n   x <b> y\n   ```\n2. next",
    "> ```\n> <div>quoted code</div>\n> ```",
    "    indented <code> block\n",
    "[link](https://x.test/?a=1&b=2) and ![pic](https://x.test/p.png)",
    "# Title with `<tag>`\n\nSetext `<x>`\n---",
    "a `multi\nline <b>` span",
    "| a | `x<y` |\n|---|:-:|\n| `<b>` | 2 |",
])
def test_ordinary_markdown_survives(text: str) -> None:
    """Ordinary Markdown (emphasis, lists, quotes, a bare <, code with < in it, in containers too) is kept as typed."""
    assert sanitize_markdown(text) == text


_FRAGMENTS = [
    "`", "``", "```", "~~~", "\\", "\\`", "\n", "\n\n", " ", "   ", "    ", "\t", "1. ", "- ", "* ", "> ", "#",
    "<", ">", "/", "=", '"', "'", "&", ";", "&lt;", "&gt;", "&#60;", "&#96;", "&amp;", "&#x3C;", "x", "a b",
    "*", "_", "[", "]", "(", ")", "![", "](", "---", "===",
    "<img src=x onerror=alert(1)>", "<script>", "</script>", "<a href=x onclick=y>", "</a>", "<div>", "</div>",
    "<b>", "<img", " src=x", " onerror=alert(1)", "<!--", "-->", "<?", "?>", "<![CDATA[", "]]>", "<!X",
    "<https://x.test>", "javascript:alert(1)", "|", " | ", "|-|", "---|---\n", "\\|", "<style>", "<textarea>", "<pre>", "</pre>", "\r", "\x0c", "\u00a0",
]
_markdownish = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_markdownish)
@example("\\`<img src=x onerror=alert(1)>`")
@example("1. item\n   ```\n\n<img src=x onerror=alert(1)>")
@example("&#96;&lt;img src=x onerror=alert(1)&gt;&#96;")
def test_sanitized_text_never_renders_foreign_html(text: str) -> None:
    """For any text, the sanitized Markdown renders (CommonMark with raw HTML enabled, with and without
    GFM tables) to Markdown's own tags only: no other tag, no on* or other foreign attribute, no
    comment, no script URL."""
    cleaned = sanitize_markdown(text)
    assert _foreign_html(cleaned) == [], cleaned


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ab *_-1.>`~#[]()!|:\\\n\t", max_size=60))
def test_text_without_markup_characters_is_kept_verbatim(text: str) -> None:
    """Text with no '<' or '&' (any mix of Markdown punctuation, backticks and containers) comes out unchanged."""
    assert sanitize_markdown(text) == text


@pytest.mark.parametrize("text,expected", [
    ("a\ud800b", "a\ufffdb"),
    ("<b>x\udfff</b> `\ud800<i>`", "x\ufffd `\ufffd<i>`"),
])
def test_lone_surrogates_become_replacement_characters(text: str, expected: str) -> None:
    """A lone surrogate (valid in a JSON escape, not in UTF-8, refused by nh3) becomes U+FFFD, in prose and code."""
    assert sanitize_markdown(text) == expected
    expected.encode("utf-8")


# --------------------------------------------------------------------------- 2. access changing mid-frame


class DelayedStore(MemoryChatStore):
    """The memory store, but the named methods answer only when ``release()`` is called (a slow Redis).
    Like one Redis connection it answers in order: while a call waits, every later call waits behind it."""

    def __init__(self, *slow: str) -> None:
        super().__init__()
        self.slow = set(slow)
        self.pending: list[tuple[Deferred, Callable[[], Deferred]]] = []

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in IChatStore.names() and (name in self.slow or self.pending):
            def delayed(*args: Any) -> Deferred:
                d: Deferred = Deferred()
                self.pending.append((d, lambda: value(*args)))
                return d
            return delayed
        return value

    def release(self) -> int:
        """Answer the calls waiting so far, in order (calls they cause wait for the next release);
        the number answered."""
        count = len(self.pending)
        for _ in range(count):
            d, call = self.pending.pop(0)
            call().chainDeferred(d)
        return count


class Race:
    """One chat instance on a store of delayed answers, on a loop bus."""

    def __init__(self, *slow: str) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = DelayedStore(*slow)
        self.bus = LoopBus()
        self.service = ChatService(self.clock, self.store, self.bus.publish)
        self.bus.services.append(self.service)

    def connect(self, login: str, workspaces: tuple = (WS,)) -> Session:
        session = Session(RecordingConnection(login), "chat")
        session.access = _access(login, workspaces)
        self.service.attach(session)
        return session

    def close(self, session: Session) -> None:
        self.service.detach(session)

    def send(self, session: Session, frame: dict) -> Deferred:
        d = self.service.handle_frame(session, frame)
        assert d is not None
        return d

    def resubscribe(self, session: Session, access: Access | None) -> None:
        """What Gateway._accept / _unsubscribe do: replace the access, then tell the chat service."""
        session.access = access
        self.service.access_changed(session)

    def settle(self) -> None:
        """Release the store until nothing waits any more."""
        for _ in range(20):
            if not self.store.release():
                return
        raise AssertionError("the store never settled")

    def users(self) -> list[str]:
        room = self.store._rooms and next(iter(self.store._rooms))
        return sorted(self.store._users[room]) if room else []


def _access(login: str, workspaces: tuple = (WS,)) -> Access:
    return Access(login, f"sub-{login}", "standard", frozenset(), workspaces)


def _errors(session: Session) -> list[str]:
    return [f["error"] for f in frames(session) if f.get("@type") == "error"]


@pytest.mark.parametrize("slow", ["find_or_create_room", "touch_user", "page"])
def test_join_refused_when_the_access_loses_the_room_while_the_store_answers(slow: str) -> None:
    """A JOIN waiting on the store when a re-subscribe removes the workspace attaches nothing, is answered
    with an error, and the socket hears no message of that room afterwards."""
    race = Race(slow)
    mallory, bob = race.connect("mallory"), race.connect("bob")
    done = race.send(mallory, join())
    race.resubscribe(mallory, _access("mallory", ()))
    race.settle()
    assert done.called
    received = frames(mallory)
    assert kinds(received) == ["error"], received
    assert "JOIN" in received[0]["error"] and "not allowed" in received[0]["error"]
    assert race.service.rooms_of(mallory) == frozenset()
    race.send(bob, join())
    race.settle()
    room_uuid = next(iter(race.service.rooms_of(bob)))
    race.send(bob, post(room_uuid, "the secret plan"))
    race.settle()
    assert frames(mallory) == []
    assert race.users() == ["bob"]


@pytest.mark.parametrize("slow", ["find_or_create_room", "touch_user", "page"])
def test_join_refused_when_the_socket_unsubscribes_while_the_store_answers(slow: str) -> None:
    """A JOIN waiting on the store when the socket unsubscribes ends with a 'not subscribed' error,
    no attached room, no stored presence, and no internal error."""
    race = Race(slow)
    alice = race.connect("alice")
    done = race.send(alice, join())
    race.resubscribe(alice, None)
    race.settle()
    assert done.called
    assert _errors(alice) == ["JOIN: not subscribed"]
    assert race.service.rooms_of(alice) == frozenset()
    assert race.users() == []


@pytest.mark.parametrize("slow", ["find_or_create_room", "touch_user", "page"])
def test_join_refused_when_the_login_changes_while_the_store_answers(slow: str) -> None:
    """A JOIN sent as alice that completes after the socket re-subscribed as bob attaches nothing for either."""
    race = Race(slow)
    tab = race.connect("alice")
    done = race.send(tab, join())
    race.resubscribe(tab, _access("bob"))
    race.settle()
    assert done.called
    errors = _errors(tab)
    assert len(errors) == 1 and errors[0].startswith("JOIN:"), errors
    assert race.service.rooms_of(tab) == frozenset()
    assert race.users() == []


def test_join_goes_on_when_a_resubscribe_keeps_the_room() -> None:
    """A re-subscribe that still allows the room (token refresh) does not disturb a JOIN in flight."""
    race = Race("find_or_create_room", "touch_user", "page")
    alice = race.connect("alice")
    done = race.send(alice, join())
    race.resubscribe(alice, _access("alice"))
    race.settle()
    assert done.called
    assert set(kinds(frames(alice))) == {"ROOM_UPDATE"}  # its own, then the JOIN's broadcast
    assert len(race.service.rooms_of(alice)) == 1
    assert race.users() == ["alice"]


def test_ping_refused_when_the_access_loses_the_room_while_the_store_answers() -> None:
    """A PING of a joined room waiting on the store when the room is revoked ends detached, with an error."""
    race = Race()
    alice = race.connect("alice")
    race.send(alice, join())
    frames(alice)
    race.store.slow.add("touch_user")
    done = race.send(alice, ping())
    race.resubscribe(alice, _access("alice", ()))
    race.settle()
    assert done.called
    assert [e for e in _errors(alice) if "not allowed" in e], "the PING is refused"
    assert race.service.rooms_of(alice) == frozenset()
    assert race.users() == []


@pytest.mark.parametrize("slow", ["find_room", "page"])
def test_history_refused_when_the_access_loses_the_room_while_the_store_answers(slow: str) -> None:
    """A HISTORY waiting on the store when the room is revoked sends no message of it, only an error."""
    race = Race()
    alice = race.connect("alice")
    race.send(alice, join())
    race.send(alice, post(next(iter(race.service.rooms_of(alice))), "secret"))
    race.resubscribe(alice, _access("alice", ()))
    frames(alice)
    race.resubscribe(alice, _access("alice"))  # the workspace is back: the HISTORY may start
    race.store.slow.add(slow)
    done = race.send(alice, history())
    race.resubscribe(alice, _access("alice", ()))
    race.settle()
    assert done.called
    received = frames(alice)
    assert kinds(received) == ["error"], received
    assert "HISTORY" in received[0]["error"] and "not allowed" in received[0]["error"]


def test_history_of_a_joined_room_refused_when_revoked_while_loading() -> None:
    """HISTORY of a joined room whose access is revoked while the page loads sends neither the page
    nor the broadcasts held meanwhile."""
    race = Race()
    alice, bob = race.connect("alice"), race.connect("bob")
    race.send(alice, join())
    race.send(bob, join())
    room_uuid = next(iter(race.service.rooms_of(alice)))
    frames(alice)
    race.store.slow.add("page")
    done = race.send(alice, history())
    race.send(bob, post(room_uuid, "said while alice loads"))
    race.resubscribe(alice, _access("alice", ()))
    race.settle()
    assert done.called
    received = frames(alice)
    assert kinds(received) == ["error"], received


# --------------------------------------------------------------------------- 3. stop waits for presence


def test_stop_waits_for_the_presence_removals_of_closed_sockets() -> None:
    """stop() fires only once the leave started by a closing socket is stored and published."""
    chat = Race()
    store, service = chat.store, chat.service
    alice, bob = chat.connect("alice"), chat.connect("bob")
    chat.send(alice, join())
    chat.send(bob, join())
    chat.settle()
    store.slow.add("remove_user")
    chat.close(alice)
    chat.close(bob)
    stopped = service.stop()
    assert isinstance(stopped, Deferred) and not stopped.called
    assert store.release() == 2
    assert stopped.called
    assert chat.bus.events[-1]["Room"]["Users"] == []
    assert chat.clock.getDelayedCalls() == []


def test_stop_waits_for_an_expiry_in_flight() -> None:
    """stop() also waits for a presence expiry whose store update is still running."""
    chat = Race()
    store, service = chat.store, chat.service
    alice = chat.connect("alice")
    chat.send(alice, join())
    store.slow.add("remove_user")
    chat.clock.advance(20)
    stopped = service.stop()
    assert not stopped.called
    store.release()
    assert stopped.called
    assert chat.bus.events[-1]["Room"]["Users"] == []


def test_stop_fires_at_once_when_nothing_is_pending_and_survives_a_failed_leave() -> None:
    """stop() fires at once with nothing in flight, and a leave whose store call fails still lets it fire."""
    assert Race().service.stop().called
    chat = Race()
    store, service = chat.store, chat.service
    alice = chat.connect("alice")
    chat.send(alice, join())
    store.slow.add("remove_user")
    chat.close(alice)
    stopped = service.stop()
    (d, _), = store.pending
    d.errback(ConnectionError("redis went away"))
    assert stopped.called and stopped.result is None


def test_a_timed_out_stop_leaves_the_pending_leave_alone() -> None:
    """Cancelling stop()'s Deferred (its caller's timeout) neither cancels the leave nor breaks it later."""
    chat = Race()
    store, service = chat.store, chat.service
    alice = chat.connect("alice")
    chat.send(alice, join())
    store.slow.add("remove_user")
    chat.close(alice)
    stopped = service.stop()
    stopped.cancel()
    stopped.addErrback(lambda f: None)
    store.release()
    assert chat.bus.events[-1]["Room"]["Users"] == []
