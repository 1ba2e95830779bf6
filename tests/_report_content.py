"""What a report page shows, as data: its sections, and per record card the views and the numbers in its text.

Used to check that a report of old records still shows what the version that wrote them showed.
"""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser

_NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


class _Cards(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.cards: dict[str, dict] = {}
        self._stack: list[str | None] = []  # card key of each open div (None: not a card)
        self._depth_skip = 0  # inside <style>/<script>
        self._seen: Counter = Counter()

    def _card(self) -> dict | None:
        for key in reversed(self._stack):
            if key is not None:
                return self.cards[key]
        return None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("style", "script"):
            self._depth_skip += 1
        if tag == "section" and "data-section" in a:
            self.sections.append(a["data-section"])
        if tag == "div":
            key = None
            if "record" in (a.get("class") or "").split():
                base = f"{a.get('data-method')}/{a.get('data-name')}/{a.get('data-epoch')}"
                key = f"{base}#{self._seen[base]}"
                self._seen[base] += 1
                self.cards[key] = {"views": [], "numbers": []}
            self._stack.append(key)
        card = self._card()
        if card is not None and "data-view" in a and tag == "div":
            card["views"].append(a["data-view"])

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._depth_skip -= 1
        if tag == "div" and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        card = self._card()
        if card is not None and not self._depth_skip:
            card["numbers"] += [n.replace("−", "-") for n in _NUMBER.findall(data)]


def report_content(page: str) -> dict:
    """``{"sections": [...], "cards": {"method/name/epoch#i": {"views": [...], "numbers": [...]}}}``."""
    parser = _Cards()
    parser.feed(page)
    return {"sections": parser.sections, "cards": parser.cards}
