"""HTML sanitising with nh3 (ammonia): the one place untrusted markup is made safe."""

from __future__ import annotations

import html
import re

import nh3

_TAGS = (set(nh3.ALLOWED_TAGS) | {"figure", "figcaption", "picture", "source"}) - {"map", "area"}
_ATTRIBUTES = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "a": {"href", "hreflang", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "source": {"srcset", "type", "media"},
    "abbr": {"title"},
    "time": {"datetime"},
}
_SCHEMES = {"http", "https", "mailto"}
_CLEAN_CONTENT = {"script", "style", "iframe", "object", "embed", "noscript", "template", "svg", "math"}
_WHITESPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]*>")


def sanitize_html(markup: str | None, base_url: str | None = None) -> str | None:
    """Safe HTML with relative URLs made absolute against ``base_url``; None when empty."""
    if not markup or not markup.strip():
        return None
    relative = ("rewrite_with_base", base_url) if base_url else "deny"
    cleaned = nh3.clean(
        markup,
        tags=_TAGS,
        clean_content_tags=_CLEAN_CONTENT,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        url_relative=relative,
        link_rel="noopener noreferrer",
    ).strip()
    return cleaned or None


def plain_text(markup: str | None) -> str | None:
    """Text content of an HTML fragment (or plain text), whitespace collapsed."""
    if not markup:
        return None
    text = _WHITESPACE.sub(" ", html.unescape(_TAG.sub(" ", nh3.clean(markup, tags=set())))).strip()
    return text or None
