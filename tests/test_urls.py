from __future__ import annotations

import pytest

from aggregator.urls import absolute_url, canonical_url


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://news.example.com/2026/11/story-42?utm_source=rss&utm_medium=feed#top", "https://news.example.com/2026/11/story-42"),
        ("https://NEWS.example.com:443/2026/11/story-42/?fbclid=abc123&gclid=xyz", "https://news.example.com/2026/11/story-42"),
        ("HTTP://Example.COM:80/a/b/", "http://example.com/a/b"),
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("https://example.com/a?b=2&a=1&utm_campaign=x", "https://example.com/a?b=2&a=1"),
        ("https://example.com/a?id=5&mc_cid=1&_hsenc=2&msclkid=3", "https://example.com/a?id=5"),
        ("https://example.com/", "https://example.com"),
        ("https://example.com//a//b", "https://example.com/a/b"),
        ("https://example.com/%7Euser/", "https://example.com/~user"),
        ("https://example.com/über", "https://example.com/%C3%BCber"),
        ("https://example.com/%c3%bcber", "https://example.com/%C3%BCber"),
    ],
)
def test_canonical_url(url, canonical):
    assert canonical_url(url) == canonical


def test_canonical_url_is_idempotent():
    once = canonical_url("https://Example.com:443/x/?utm_source=a&q=%20b#f")
    assert canonical_url(once) == once


def test_absolute_url():
    assert absolute_url("/a/5", "http://127.0.0.1:8000/feed.xml") == "http://127.0.0.1:8000/a/5"
    assert absolute_url("b", "http://h/dir/feed.xml") == "http://h/dir/b"
    assert absolute_url("javascript:alert(1)", "http://h/") is None
    assert absolute_url("  ", "http://h/") is None
    assert absolute_url(None, "http://h/") is None


@pytest.mark.parametrize("url", ["http://[x]/", "http://]", "http://[::1", "http://a\uff03b/"])
def test_malformed_urls_give_none_instead_of_raising(url):
    assert canonical_url(url) is None
    assert absolute_url(url, "http://h/") is None
    assert absolute_url("page", url) is None
