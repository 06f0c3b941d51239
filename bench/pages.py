"""Deterministic, realistic news article pages (40-80 KB) with heavy boilerplate, for benchmarks."""

from __future__ import annotations

import html
import random

WORDS_DE = (
    "die der und in zu den das nicht von sie ist des sich mit dem dass er es ein ich auf so eine auch als an nach "
    "wie im für man aber aus durch wenn nur war noch werden bei hat wir was wird sein einen welche sind oder zur um "
    "Bürgermeisterin Straßenbahn Fußgängerbrücke Öffentlichkeit Verkehrsministerium Haushaltsplan Ausschuss "
    "Stadtrat Gemeinde Brücke Verwaltung Bürger Schüler Lehrer Krankenhaus Pflegekräfte Gewerkschaft Tarifrunde "
    "Energiepreise Wärmepumpe Klimaschutz Bundestag Länder Kommunen Förderung Zuschüsse Bäckerei Grünfläche"
).split()
WORDS_EN = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "council transport minister budget committee hospital nurses union negotiations energy prices climate "
    "parliament regions funding grants residents commuters researchers university laboratory satellite harbour "
    "festival museum exhibition economy inflation interest rates election campaign candidates survey"
).split()


def _sentence(rng: random.Random, words: list[str]) -> str:
    chosen = [rng.choice(words) for _ in range(rng.randint(9, 22))]
    text = " ".join(chosen)
    if rng.random() < 0.3:
        text += f", sagte »{rng.choice(words).capitalize()} {rng.choice(words)}«" if words is WORDS_DE else f", said “{rng.choice(words)}”"
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, german: bool) -> str:
    words = WORDS_DE if german else WORDS_EN
    return " ".join(_sentence(rng, words) for _ in range(rng.randint(3, 6)))


def _nav(rng: random.Random) -> str:
    links = "".join(f'<li><a href="/section/{i}">Rubrik {i}</a></li>' for i in range(rng.randint(40, 80)))
    return f'<header class="site-header"><nav class="main-nav"><ul>{links}</ul></nav></header>'


def _comments(rng: random.Random, german: bool) -> str:
    items = "".join(
        f'<div class="comment"><span class="comment-author">Leser{i}</span><p>{paragraph(rng, german)}</p></div>'
        for i in range(rng.randint(4, 12))
    )
    return f'<section id="comments" class="comments"><h3>Kommentare</h3>{items}</section>'


def _padding(rng: random.Random, size: int) -> str:
    css = "".join(f".c{i}{{margin:{i % 7}px;padding:{i % 5}px;color:#{i % 255:02x}{i % 200:02x}aa}}" for i in range(size // 40))
    return f"<style>{css}</style>"


def article_page(seed: int, url: str, *, min_kb: int = 40, max_kb: int = 80) -> tuple[bytes, list[str]]:
    """A page and the paragraphs of its article body."""
    rng = random.Random(seed)
    german = seed % 2 == 0
    body = [paragraph(rng, german) for _ in range(rng.randint(8, 16))]
    article = []
    for index, text in enumerate(body):
        article.append(f"<p>{html.escape(text, quote=False)}</p>")
        if index == 2:
            article.append('<div class="ad">ANZEIGE: Jetzt kaufen und sparen!</div>')
        if index == 5:
            article.append(f"<h2>{html.escape(_sentence(rng, WORDS_DE if german else WORDS_EN)[:60])}</h2>")
    related = "".join(f'<li><a href="/story/{seed}-{i}">Mehr zum Thema {i}</a></li>' for i in range(8))
    page = (
        f'<!DOCTYPE html><html lang="{"de" if german else "en"}"><head><meta charset="utf-8">'
        f"<title>Artikel {seed}</title><meta name=\"author\" content=\"Autorin {seed % 37}\">"
        f"<script>window.dataLayer=[{{'page':{seed}}}];</script></head><body>{_nav(rng)}"
        '<div class="cookie-banner">Wir verwenden Cookies. <button>Akzeptieren</button></div>'
        f'<main><article class="story"><h1>Artikel {seed}</h1>{"".join(article)}</article>'
        f'<aside class="related"><h3>Mehr zum Thema</h3><ul>{related}</ul></aside></main>'
        f"{_comments(rng, german)}<footer>© 2026 · Impressum · Datenschutz</footer>"
    )
    target = rng.randint(min_kb, max_kb) * 1024
    page += _padding(rng, max(0, target - len(page.encode("utf-8")) - 20))
    return (page + "</body></html>").encode("utf-8"), body
