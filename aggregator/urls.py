"""URL canonicalisation: one spelling per address, used to recognise the same story."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

_TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "gclsrc", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid",
        "igshid", "mc_cid", "mc_eid", "_hsenc", "_hsmi", "mkt_tok", "oly_anon_id", "oly_enc_id",
        "vero_id", "wickedid", "rb_clickid", "s_cid", "ncid", "ocid", "cmpid", "at_medium",
        "at_campaign", "ref_src", "ref_url", "spm", "xtor", "wt_mc", "wt.mc_id", "__twitter_impression",
    }
)
_TRACKING_PREFIXES = ("utm_", "pk_", "mtm_", "matomo_", "hsa_", "itm_")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SAFE_PATH = "/%:@!$&'()*+,;=-._~"


def is_tracking_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in _TRACKING_PARAMS or lowered.startswith(_TRACKING_PREFIXES)


# An absolute http(s) URL with nothing urljoin would respell: no query, fragment, parameters or brackets.
_PLAIN_HTTP = re.compile(r"https?://[^/?#;\[\]\x00-\x20\x7f]+(?:/[^?#;\[\]\x00-\x20\x7f]*)?")


def is_plain_http(link: str) -> bool:
    """Whether ``link`` is an absolute http(s) URL that ``urljoin`` returns unchanged against any base."""
    return link.isascii() and _PLAIN_HTTP.fullmatch(link) is not None


def absolute_url(link: str | None, base: str) -> str | None:
    """``link`` resolved against ``base``; None for empty, malformed or non-http(s) links."""
    if not link or not link.strip():
        return None
    link = link.strip()
    if is_plain_http(link):  # most links: as urljoin would give them, at a third of its cost
        return link
    try:
        resolved = urljoin(base, link)
        scheme = urlsplit(resolved).scheme
    except ValueError:  # e.g. "http://[x]/": brackets around something that is not an IPv6 address
        return None
    return resolved if scheme.lower() in ("http", "https") else None


def canonical_url(url: str) -> str | None:
    """The canonical spelling of an http(s) URL; None for one that cannot be parsed (``http://[x]/``).

    Lower-case scheme and host, no default port, no fragment, no trailing slash,
    no tracking parameters, remaining query parameters kept in their order,
    percent-encoding normalised.
    """
    plain = _PLAIN_CANONICAL.fullmatch(url) if url.isascii() else None
    if plain:
        return _plain_canonical(*plain.groups())
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    netloc = _netloc(parts.hostname or "", parts.port if _has_valid_port(parts) else None, scheme)
    path = _path(parts.path)
    query = _query(parts.query)
    return urlunsplit((scheme, netloc, path, query, ""))


# A URL already in canonical form but for its port and slashes: lower-case scheme and host, no
# userinfo, query, fragment or percent-escapes, nothing in the path that quoting would change.
_PLAIN_CANONICAL = re.compile(r"(https?)://([a-z0-9.-]+)(?::([1-9][0-9]{0,4}))?(/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*)?")


def _plain_canonical(scheme: str, host: str, port: str | None, path: str | None) -> str:
    """:func:`canonical_url` of a URL ``_PLAIN_CANONICAL`` matched, without parsing it again (a third of the time)."""
    number = int(port) if port else None
    netloc = _netloc(host, number if number is not None and number <= 65535 else None, scheme)
    return f"{scheme}://{netloc}{_path(path or '')}"


def _has_valid_port(parts) -> bool:
    try:
        parts.port
    except ValueError:
        return False
    return True


def _netloc(host: str, port: int | None, scheme: str) -> str:
    host = host.lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return host
    return f"{host}:{port}"


def _path(path: str) -> str:
    path = quote(unquote(path), safe=_SAFE_PATH)
    path = re.sub(r"/{2,}", "/", path)
    return path.rstrip("/")


def _query(query: str) -> str:
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if not is_tracking_param(k)]
    return urlencode(pairs, quote_via=quote, safe="/:@!$'()*,;-._~")
