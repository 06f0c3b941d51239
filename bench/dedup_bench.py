"""Near-duplicate benchmark: dedup of N synthetic entries, a known share of them near-duplicates.

    python bench/dedup_bench.py [--entries 100000] [--dup-share 0.2] [--feeds 200] [--days 30] [--json]

Generates ``N * (1 - dup_share)`` original stories (German and English news-like
bodies of 80-400 words, words drawn from a Zipf-like vocabulary per language so
that unrelated texts share their common words) and ``N * dup_share``
near-duplicates, each derived from a random original: 3-10 % of its words
replaced, a sentence added or dropped, another feed's boilerplate line, and
sometimes another headline; published within the dedup window after their
original. Every feed appends its own boilerplate line to its entries.

The entries are first written to a temporary file as feeds would deliver them, 20 per
feed document, in publication order (not timed). Then they take the product's path, timed as
a whole: the worker pool fingerprints each document (``parse.keyed_entries``, as
``parse_feed`` does: the feed's boilerplate found, every entry keyed) while this process
stores the documents in order through the poll pipeline's writer (``aggregator.writer.StoreWriter``:
a thread of its own, several feeds per transaction), into a real SQLite file. Storing per document puts some copies in the store before their original: the
original then links the stories of both. Precision and recall are computed over pairs
of entries (two entries of one true story both in one stored story), from
``entries.duplicate_of`` against the known labels; recall is also broken down by
the true Jaccard similarity of each near-duplicate's shingles to its original's.

Targets (PASS/FAIL lines, exit 0 either way): >= 2,000 entries/s, precision >= 0.99,
recall >= 0.95, peak RSS < 300 MB. ``--json`` prints one JSON document on stdout.

``--what-if`` stores nothing: it replays MinHash/LSH decisions with other parameters
(shingle size, number of hash functions, bands x rows, threshold) over a sample of the
synthetic near-duplicate pairs, over every pair of the hand-labelled fixtures in
tests/data/stories/ (hard negatives included) and over pairs of short reports sharing a
long footer, to show what a change of parameters would buy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pickle
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from aggregator.dedup import DedupSettings, boilerplate
from aggregator.parse import keyed_entries
from aggregator.similarity import shingles, words
from aggregator.storage import Store
from aggregator.storage.store import FeedWrite
from aggregator.types import FeedConfig, FetchResult, ParsedEntry, ParsedFeed
from aggregator.workers import WorkerPool
from aggregator.writer import StoreWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import TreeMemorySampler  # noqa: E402

RATE_TARGET = 2000.0
PRECISION_TARGET = 0.99
RECALL_TARGET = 0.95
MEMORY_TARGET_MB = 300.0
BATCH = 20
AHEAD = 8  # feed documents handed to the workers ahead of the one being stored
WAITING = 32  # feed documents waiting to be stored at most (a poll's concurrency)
START = datetime(2026, 10, 1, tzinfo=UTC)

def _split(text: str) -> list[str]:
    return text.split()


# The most frequent words of each language, most frequent first; a generated tail follows.
GERMAN_TOP = _split("""der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an werden
aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum war haben nur oder aber vor zur
bis mehr durch man sein wurde sei hatte kann gegen vom können schon wenn habe seine Prozent Millionen Euro Stadt
Jahr Jahren sagte neue ersten zwei drei Uhr Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag Polizei
Regierung Bundesregierung Kanzler Minister Land Bund Köln Berlin Hamburg München Deutschland Europa Unternehmen
Menschen Kinder Frauen Männer Schulen Zeit heute gestern morgen wieder bereits rund etwa knapp laut nach Angaben
soll sollen müssen wollen will dort hier damit weil ob wo Sprecher Bürgermeister Gericht Millionen Milliarden""")
ENGLISH_TOP = _split("""the of and to a in that is was he for it with as his on be at by this had not are but from or have an
they which one you were her all she there would their we him been has when who will more no if out so said what up
its about into than them can only other new some could time these two may then do first any now such like our over
even most made after also did many before must through back years where much way well down should because each
just those people how too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against go came right
used take three percent million billion police government minister council city country company Monday Tuesday
Wednesday Thursday Friday Saturday Sunday officials according told week month""")
SYLLABLES = {
    "de": _split("""ab an be ber bra bu cha de den der dorf ein el en er fa feld ge gen gra haus hei ho in ka kel ken
          kir la land lich lo ma mann me mit na ne nung ra re rei ren ri ro sa schaft schu se sen stadt stein
          ter tung ul um ung ver wa we wer zei zu"""),
    "en": _split("""a al an ar ba be bo ca ce con da de di ed el en er es ford ga ham ing ion is ka la le li lo ly ma
          ment mi mo na ne ni no ous pa per pro ra re ri ro sa se son ston ta te ter ti tion to un ver wa"""),
}
BOILERPLATE = {
    "de": [
        "Abonnieren Sie unseren kostenlosen Newsletter und erhalten Sie die wichtigsten Nachrichten jeden Morgen.",
        "Mehr zum Thema lesen Sie in unserem Dossier auf der Startseite.",
        "Sie haben einen Hinweis für unsere Redaktion? Schreiben Sie uns.",
        "Folgen Sie uns auch auf Instagram, Threads und Mastodon.",
        "Dieser Artikel wurde zuletzt aktualisiert. Alle Angaben ohne Gewähr.",
        "Mit Material der Nachrichtenagenturen. Die Redaktion hat den Text bearbeitet.",
    ],
    "en": [
        "Sign up for our morning newsletter to get the day's biggest stories in your inbox.",
        "Read more: our full coverage of this story is on the front page.",
        "Got a story? Email our newsroom, we read every message.",
        "Follow us on Threads, Bluesky and Mastodon for live updates.",
        "This article was last updated this morning. Additional reporting by our staff.",
        "Copyright 2026. All rights reserved. This material may not be redistributed.",
    ],
}


class Vocabulary:
    """A language's words with Zipf-like frequencies (rank ** -1.05), sampled by inverse CDF."""

    def __init__(self, language: str, size: int, rng: np.random.Generator) -> None:
        top = GERMAN_TOP if language == "de" else ENGLISH_TOP
        syllables = SYLLABLES[language]
        seen = set(map(str.lower, top))
        tail: list[str] = []
        while len(tail) < size - len(top):
            word = "".join(rng.choice(syllables, size=int(rng.integers(2, 5))))
            if word not in seen:
                seen.add(word)
                tail.append(word.capitalize() if language == "de" and rng.random() < 0.35 else word)
        self.words = np.array(top + tail, dtype=object)
        weights = np.arange(1, len(self.words) + 1, dtype=np.float64) ** -1.05
        self.cumulative = np.cumsum(weights / weights.sum())

    def sample(self, rng: np.random.Generator, n: int) -> list[str]:
        index = np.searchsorted(self.cumulative, rng.random(n), side="right")
        return list(self.words[np.minimum(index, len(self.words) - 1)])


@dataclass(frozen=True)
class Plan:
    """What entry ``index`` is; its text is regenerated from the seed when it is stored."""

    index: int
    feed: int
    published: float  # seconds after START
    original: int  # the index of its story's original (itself for an original)


def sentences(rng: np.random.Generator, vocabulary: Vocabulary, n_words: int) -> list[list[str]]:
    out, left = [], n_words
    while left > 0:
        length = min(left, int(rng.integers(8, 23)))
        out.append(vocabulary.sample(rng, length))
        left -= length
    return out


def render(sentence_list: list[list[str]]) -> list[str]:
    return [" ".join([s[0].capitalize(), *s[1:]]) + "." for s in sentence_list if s]


class Corpus:
    """Deterministic synthetic news: entry ``i``'s text depends only on the seed and ``i``."""

    def __init__(self, entries: int, dup_share: float, feeds: int, days: float, window: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.vocabulary = {lang: Vocabulary(lang, 40_000, np.random.default_rng([seed, i])) for i, lang in enumerate(("de", "en"))}
        self.feed_language = ["de" if f % 5 < 3 else "en" for f in range(feeds)]
        self.feed_boilerplate = [
            BOILERPLATE[lang][f % len(BOILERPLATE[lang])] + f" ({'Redaktion' if lang == 'de' else 'Desk'} {f})"
            for f, lang in enumerate(self.feed_language)
        ]
        by_language = {lang: [f for f in range(feeds) if self.feed_language[f] == lang] for lang in ("de", "en")}
        n_dups = round(entries * dup_share)
        n_orig = entries - n_dups
        span = days * 86400.0
        plans: list[Plan] = []
        orig_feeds = rng.integers(0, feeds, size=n_orig)
        orig_times = np.sort(rng.uniform(0, span, size=n_orig))
        for i in range(n_orig):
            plans.append(Plan(i, int(orig_feeds[i]), float(orig_times[i]), i))
        sources = rng.integers(0, n_orig, size=n_dups)
        for k, source in enumerate(sources):
            original = plans[int(source)]
            others = [f for f in by_language[self.feed_language[original.feed]] if f != original.feed]
            feed = int(others[int(rng.integers(0, len(others)))])
            delay = float(rng.uniform(60.0, 0.85 * window))
            plans.append(Plan(n_orig + k, feed, original.published + delay, original.index))
        self.plans = plans
        self.n_orig = n_orig

    def _original_text(self, plan: Plan) -> tuple[str, list[list[str]], str]:
        rng = np.random.default_rng([self.seed, 1, plan.index])
        vocabulary = self.vocabulary[self.feed_language[plan.feed]]
        title = " ".join(vocabulary.sample(rng, int(rng.integers(6, 13)))).capitalize()
        body = sentences(rng, vocabulary, int(rng.integers(80, 401)))
        return title, body, self.feed_language[plan.feed]

    def text(self, plan: Plan) -> tuple[str, list[str], str]:
        """(title, paragraphs without boilerplate, language); a near-duplicate is derived from its original."""
        original = self.plans[plan.original]
        title, body, language = self._original_text(original)
        if plan.original != plan.index:
            rng = np.random.default_rng([self.seed, 2, plan.index])
            vocabulary = self.vocabulary[language]
            body = [list(s) for s in body]
            flat = [(i, j) for i, s in enumerate(body) for j in range(len(s))]
            changes = max(1, round(len(flat) * rng.uniform(0.03, 0.10)))
            for pick in rng.choice(len(flat), size=changes, replace=False):
                i, j = flat[int(pick)]
                body[i][j] = vocabulary.sample(rng, 1)[0]
            if rng.random() < 0.5 and len(body) > 2:
                del body[int(rng.integers(0, len(body)))]
            else:
                body.insert(int(rng.integers(0, len(body) + 1)), vocabulary.sample(rng, int(rng.integers(8, 23))))
            if rng.random() < 0.35:
                title = " ".join(vocabulary.sample(rng, int(rng.integers(6, 13)))).capitalize()
        return title, render(body), language

    def entry(self, plan: Plan) -> ParsedEntry:
        title, paragraphs, language = self.text(plan)
        html = _paragraphs(paragraphs) + f"<p>{self.feed_boilerplate[plan.feed]}</p>"
        return ParsedEntry(
            guid=f"bench-{plan.index}",
            link=f"https://feed{plan.feed}.example/{plan.published:.0f}/{plan.index}",
            title=title,
            author=None,
            published=iso(plan.published),
            updated=None,
            summary=None,
            content=html,
            language=language,
        )


def _paragraphs(sentence_texts: list[str]) -> str:
    out, i = [], 0
    while i < len(sentence_texts):
        out.append("<p>" + " ".join(sentence_texts[i:i + 4]) + "</p>")
        i += 4
    return "".join(out)


def iso(offset: float) -> str:
    return (START + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def feed_url(feed: int) -> str:
    return f"https://feed{feed}.example/rss"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pair_count(sizes: Counter) -> int:
    return sum(n * (n - 1) // 2 for n in sizes.values())


def true_jaccard(corpus: Corpus, plan: Plan) -> float:
    def shingle_set(p: Plan) -> set[int]:
        _, paragraphs, _ = corpus.text(p)
        text = " ".join(paragraphs) + " " + corpus.feed_boilerplate[p.feed]
        return set(shingles(words(text)).tolist())

    a, b = shingle_set(corpus.plans[plan.original]), shingle_set(plan)
    return len(a & b) / len(a | b)


# --- what-if: the same decisions with other parameters --------------------------------------------

WHAT_IF = [  # name, shingle words, hash functions, bands, rows, threshold (None: exact Jaccard >= 0.5 decides)
    ("current: 2-word, 64 = 16x4, >= 0.5", 2, 64, 16, 4, 0.5),
    ("2-word, 64 = 16x4, >= 0.45", 2, 64, 16, 4, 0.45),
    ("2-word, 63 = 21x3, >= 0.5", 2, 63, 21, 3, 0.5),
    ("2-word, 64 = 32x2, >= 0.5", 2, 64, 32, 2, 0.5),
    ("2-word, 128 = 32x4, >= 0.5", 2, 128, 32, 4, 0.5),
    ("2-word, 126 = 42x3, >= 0.5", 2, 126, 42, 3, 0.5),
    ("2-word, 126 = 42x3, >= 0.45", 2, 126, 42, 3, 0.45),
    ("2-word, 128 = 64x2, >= 0.45", 2, 128, 64, 2, 0.45),
    ("2-word, 126 = 42x3, exact J >= 0.5", 2, 126, 42, 3, None),
    ("1-word, 63 = 21x3, >= 0.6", 1, 63, 21, 3, 0.6),
    ("1-word, 126 = 42x3, >= 0.65", 1, 126, 42, 3, 0.65),
]
FAMILIES = 10  # hash families the fixture pairs are replayed with (they are few: expected counts)
POLICE_FOOTER = (
    "Rückfragen bitte an: Polizei Köln, Pressestelle, Walter-Pauli-Ring 2-6, 51103 Köln. Telefon: 0221 229-5555, "
    "E-Mail: pressestelle.koeln@polizei.nrw.de, https://koeln.polizei.nrw/ Original-Content von: Polizei Köln, "
    "übermittelt durch news aktuell"
)


def shingle_hashes(tokens: list[str], size: int) -> np.ndarray:
    """Like ``aggregator.similarity.shingles`` (identical for size 2), for runs of ``size`` words."""
    import zlib

    ids = np.fromiter((zlib.crc32(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))
    if len(ids) < size:
        return np.unique(ids)
    factors = {1: (1,), 2: (0x9E3779B1, 1), 3: (0x9E3779B1, 0x85EBCA77, 1)}[size]
    count = len(ids) - size + 1
    combined = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset, factor in enumerate(factors):
            combined += ids[offset:offset + count] * np.uint64(factor)
    return np.unique((combined ^ (combined >> np.uint64(29))) & np.uint64(0xFFFFFFFF))


class Replay:
    """MinHash/LSH decisions for pairs of token lists under one parameter set and hash family."""

    def __init__(self, texts: list[list[str]], config: tuple, family: int) -> None:
        _, size, perms, self.bands, self.rows, self.threshold = config
        rng = np.random.default_rng([family, perms])
        mult = rng.integers(1, 1 << 63, size=perms, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        add = rng.integers(0, 1 << 63, size=perms, dtype=np.uint64)
        self.sets = [shingle_hashes(t, size) for t in texts]
        with np.errstate(over="ignore"):
            self.sigs = np.stack([((h[:, None] * mult[None, :] + add[None, :]) >> np.uint64(32)).min(axis=0) for h in self.sets])

    def merged(self, i: int, j: int) -> bool:
        equal = self.sigs[i] == self.sigs[j]
        if not equal[: self.bands * self.rows].reshape(self.bands, self.rows).all(axis=1).any():
            return False
        if self.threshold is None:
            a, b = set(self.sets[i].tolist()), set(self.sets[j].tolist())
            return len(a & b) / len(a | b) >= 0.5
        return float(equal.mean()) >= self.threshold


def fixture_texts() -> list[tuple[list[str], str]]:
    """The labelled fixtures' long texts (title-only items have their own rule) with their story labels."""
    from aggregator.dedup import BODY_MIN_WORDS, body_text
    from aggregator.parse import parse_feed
    from aggregator.sanitize import html_blocks

    root = Path(__file__).resolve().parent.parent / "tests" / "data" / "stories"
    if not (root / "labels.json").exists():
        return []
    labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    items = []
    for feed in labels["feeds"]:
        entries = parse_feed((root / feed["file"]).read_bytes(), "http://feeds.test/" + feed["file"], {}).entries
        blocks = [html_blocks(e.content or e.summary) for e in entries]
        repeated = boilerplate(blocks)
        for entry, paragraphs in zip(entries, blocks, strict=True):
            tokens = words(body_text(paragraphs, repeated) or "")
            if len(tokens) < BODY_MIN_WORDS:
                tokens = words(entry.title or "") + tokens
            if len(tokens) >= 30:
                items.append((tokens, feed["entries"][entry.guid]))
    return items


def what_if(args: argparse.Namespace) -> dict:
    corpus = Corpus(args.entries, args.dup_share, args.feeds, args.days, DedupSettings().window, args.seed)
    rng = np.random.default_rng(args.seed)
    dups = corpus.plans[corpus.n_orig:]
    sample = [dups[int(i)] for i in rng.choice(len(dups), size=min(args.sample, len(dups)), replace=False)]

    def tokens(plan: Plan) -> list[str]:
        _, paragraphs, _ = corpus.text(plan)
        return words(" ".join(paragraphs) + " " + corpus.feed_boilerplate[plan.feed])

    synthetic = [t for p in sample for t in (tokens(corpus.plans[p.original]), tokens(p))]
    german = corpus.vocabulary["de"]
    reports = [words(" ".join(german.sample(rng, 22)) + ". " + POLICE_FOOTER) for _ in range(120)]
    footer_pairs = [(i, j) for i in range(0, 120, 2) for j in range(i + 1, min(i + 21, 120))]
    fixtures = fixture_texts()
    fixture_pairs = [(i, j, fixtures[i][1] == fixtures[j][1]) for i in range(len(fixtures)) for j in range(i + 1, len(fixtures))]
    results = []
    for config in WHAT_IF:
        replay = Replay(synthetic, config, args.seed)
        found = sum(replay.merged(k, k + 1) for k in range(0, len(synthetic), 2))
        replay = Replay(reports, config, args.seed)
        footer_merged = sum(replay.merged(i, j) for i, j in footer_pairs)
        tp = fp = fn = 0
        for family in range(FAMILIES):
            replay = Replay([t for t, _ in fixtures], config, family)
            for i, j, same in fixture_pairs:
                merged = replay.merged(i, j)
                tp += same and merged
                fp += merged and not same
                fn += same and not merged
        results.append({
            "config": config[0],
            "synthetic_recall": round(found / len(sample), 3),
            "footer_pairs_merged": round(footer_merged / len(footer_pairs), 4),
            "fixture_pairs_per_family": {"tp": tp / FAMILIES, "fp": fp / FAMILIES, "fn": fn / FAMILIES},
        })
    return {"sample": len(sample), "footer_pairs": len(footer_pairs), "fixture_pairs": len(fixture_pairs),
            "families": FAMILIES, "results": results}


def report_what_if(result: dict) -> None:
    print(f"what-if: {result['sample']:,} synthetic near-duplicate pairs (recall); {result['footer_pairs']:,} pairs of "
          f"unrelated 22-word reports ending in one 37-word footer (share merged); {result['fixture_pairs']:,} pairs of "
          f"labelled fixture texts (true/false/missed merges, mean over {result['families']} hash families)")
    print(f"  {'parameters':<38} {'recall':>7} {'footer merged':>14} {'fixtures tp / fp / fn':>24}")
    for row in result["results"]:
        f = row["fixture_pairs_per_family"]
        print(f"  {row['config']:<38} {row['synthetic_recall']:>7.3f} {row['footer_pairs_merged']:>14.3f} "
              f"{f['tp']:>10.1f} / {f['fp']:.1f} / {f['fn']:.1f}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_events(corpus: Corpus, order: list[Plan], path: Path) -> None:
    """The entries as feeds would deliver them, 20 per feed document, pickled one document at a time:
    ``(feed, moment, entries)``, with the rest of every feed at the end."""
    pending: dict[int, list[ParsedEntry]] = {}
    with path.open("wb") as out:
        for plan in order:
            pending.setdefault(plan.feed, []).append(corpus.entry(plan))
            if len(pending[plan.feed]) >= BATCH:
                pickle.dump((plan.feed, plan.published, pending.pop(plan.feed)), out, pickle.HIGHEST_PROTOCOL)
        last = order[-1].published if order else 0.0
        for feed, entries in pending.items():
            pickle.dump((feed, last, entries), out, pickle.HIGHEST_PROTOCOL)


def read_events(path: Path) -> Iterator[tuple[int, float, list[ParsedEntry]]]:
    with path.open("rb") as source:
        while True:
            try:
                yield pickle.load(source)
            except EOFError:
                return


@dataclass
class Timing:
    wall_s: float = 0.0
    store_s: float = 0.0
    wait_s: float = 0.0
    stored: int = 0
    slices: list[tuple[int, float]] = field(default_factory=list)


async def deduplicate(store: Store, events: Path, total: int) -> Timing:
    """The product's path: the worker pool fingerprints feed documents (as it parses them in a poll)
    while the poll pipeline's writer (``StoreWriter``, threaded) stores them in order."""
    timing = Timing()
    ahead: deque[tuple[asyncio.Future, int, float]] = deque()
    stores: list[asyncio.Future] = []
    slice_size = max(1, total // 10)
    real_store_feeds = Store.store_feeds

    def timed_store_feeds(self: Store, writes: list[FeedWrite]) -> list:
        begun = time.perf_counter()
        try:
            return real_store_feeds(self, writes)
        finally:
            timing.store_s += time.perf_counter() - begun

    Store.store_feeds = timed_store_feeds  # type: ignore[method-assign]
    try:
        async with WorkerPool() as pool:
            await pool.run(sum, [0], time_limit=30)
            writer = StoreWriter(store, threaded=True)
            started = slice_start = time.perf_counter()
            next_slice = slice_size

            async def take() -> None:
                nonlocal slice_start, next_slice
                future, feed, now = ahead.popleft()
                waited = time.perf_counter()
                entries = await future
                timing.wait_s += time.perf_counter() - waited
                url = feed_url(feed)
                parsed = ParsedFeed(title=f"Feed {feed}", site_url=None, language=None, entries=tuple(reversed(entries)))
                write = FeedWrite(url, parsed, FetchResult(url, url, 200, {}), iso(now), iso(now + 1800))
                stores.append(asyncio.ensure_future(writer.store_feed(write)))
                while sum(not f.done() for f in stores[-2 * WAITING:]) > WAITING:  # as a poll's concurrency bounds it
                    await asyncio.wait([f for f in stores[-2 * WAITING:] if not f.done()], return_when=asyncio.FIRST_COMPLETED)
                timing.stored += len(entries)
                if timing.stored >= next_slice:
                    now_s = time.perf_counter()
                    timing.slices.append((timing.stored, slice_size / (now_s - slice_start)))
                    slice_start, next_slice = now_s, next_slice + slice_size
                    log(f"  {timing.stored:>7} entries  {timing.slices[-1][1]:7.0f} entries/s in this tenth  "
                        f"(storing {timing.store_s:.1f}s, waiting {timing.wait_s:.1f}s, peak RSS {peak_rss_mb():.0f} MB)")

            for feed, now, entries in read_events(events):
                ahead.append((asyncio.ensure_future(pool.run(keyed_entries, entries, time_limit=60)), feed, now))
                if len(ahead) >= AHEAD:
                    await take()
            while ahead:
                await take()
            for outcome in await asyncio.gather(*stores, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
            await writer.aclose()
            timing.wall_s = time.perf_counter() - started
    finally:
        Store.store_feeds = real_store_feeds  # type: ignore[method-assign]
    return timing

def run(args: argparse.Namespace) -> dict:
    settings = DedupSettings(enabled=not args.no_dedup)
    corpus = Corpus(args.entries, args.dup_share, args.feeds, args.days, settings.window, args.seed)
    order = sorted(corpus.plans, key=lambda p: (p.published, p.index))
    workdir = Path(args.db).parent if args.db else Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    db_path = Path(args.db) if args.db else workdir / "bench.db"
    if db_path.exists():
        raise SystemExit(f"{db_path} exists; give a new path")
    feeds = [FeedConfig(feed_url(f)) for f in range(args.feeds)]
    rss_before = peak_rss_mb()
    with Store.open(db_path) as store:
        store.sync_feeds(feeds, iso(0))
        store.configure_dedup(settings, feeds)
        events = workdir / "events.pickle"
        started = time.perf_counter()
        write_events(corpus, order, events)
        generate_s = time.perf_counter() - started
        log(f"  {len(order):,} entries written to {events} in {generate_s:.1f}s (not timed); deduplicating")
        sampler = TreeMemorySampler(os.getpid(), interval=0.2)
        sampler.start()
        try:
            timing = asyncio.run(deduplicate(store, events, len(order)))
        finally:
            sampler.stop()
        fingerprint_s, store_s, slices, stored = timing.wait_s, timing.store_s, timing.slices, timing.stored
        wall_s = timing.wall_s
        events.unlink()
        rows = store.db.execute(
            "SELECT guid, coalesce(duplicate_of, id), duplicate_rule FROM entries WHERE feed_url LIKE 'https://feed%'"
        ).fetchall()
        db_bytes = db_path.stat().st_size + sum(
            p.stat().st_size for p in db_path.parent.glob(db_path.name + "-*") if p.is_file()
        )
    peak = max(peak_rss_mb(), sampler.peak_mb)

    predicted = {int(guid.removeprefix("bench-")): story for guid, story, _ in rows}
    truth = {p.index: p.original for p in corpus.plans}
    assert len(predicted) == len(truth) == stored, (len(predicted), len(truth), stored)
    true_pairs = pair_count(Counter(truth.values()))
    predicted_pairs = pair_count(Counter(predicted.values()))
    both = pair_count(Counter((truth[i], predicted[i]) for i in truth))
    precision = both / predicted_pairs if predicted_pairs else 1.0
    recall = both / true_pairs if true_pairs else 1.0
    original_story = {i: predicted[i] for i in range(corpus.n_orig)}
    false_merged = sum(n - 1 for n in Counter(original_story.values()).values() if n > 1)
    rules = Counter(rule for _, _, rule in rows if rule)

    log("  measuring the true Jaccard similarity of each near-duplicate to its original (not timed)")
    buckets = [(0.0, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 1.01)]
    by_bucket = {b: [0, 0] for b in buckets}
    for plan in corpus.plans[corpus.n_orig:]:
        similarity = true_jaccard(corpus, plan)
        found = predicted[plan.index] == predicted[plan.original]
        for low, high in buckets:
            if low <= similarity < high:
                by_bucket[(low, high)][0] += 1
                by_bucket[(low, high)][1] += found

    total_s = wall_s
    rate = stored / total_s if total_s else math.inf
    return {
        "command": " ".join(["python", "bench/dedup_bench.py", *sys.argv[1:]]),
        "entries": stored,
        "originals": corpus.n_orig,
        "near_duplicates": stored - corpus.n_orig,
        "feeds": args.feeds,
        "days": args.days,
        "near_duplicate_detection": not args.no_dedup,
        "seconds": {"total": round(total_s, 2), "store": round(store_s, 2), "waiting_for_fingerprints": round(fingerprint_s, 2),
                    "generate_untimed": round(generate_s, 2)},
        "entries_per_second": round(rate, 1),
        "store_per_second": round(stored / store_s, 1) if store_s else None,
        "rate_by_tenth": [round(r) for _, r in slices],
        "peak_rss_mb": round(peak, 1),
        "tree_pss_mb": round(sampler.peak_mb, 1),
        "rss_before_run_mb": round(rss_before, 1),
        "database_mb": round(db_bytes / 1e6, 1),
        "pairs": {"true": true_pairs, "predicted": predicted_pairs, "correct": both},
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "near_duplicates_found": sum(v[1] for v in by_bucket.values()),
        "originals_wrongly_merged": false_merged,
        "rules": dict(rules),
        "recall_by_true_jaccard": {
            f"{low:.1f}-{min(high, 1.0):.1f}": {"n": n, "found": found, "recall": round(found / n, 3) if n else None}
            for (low, high), (n, found) in by_bucket.items()
        },
        "database": str(db_path) if args.keep or args.db else None,
        "workdir": str(workdir),
        "targets": {
            "entries_per_second": [RATE_TARGET, rate >= RATE_TARGET],
            "precision": [PRECISION_TARGET, precision >= PRECISION_TARGET],
            "recall": [RECALL_TARGET, recall >= RECALL_TARGET],
            "peak_rss_mb": [MEMORY_TARGET_MB, peak < MEMORY_TARGET_MB],
        },
    }


def report(result: dict) -> None:
    s = result["seconds"]
    print(f"dedup benchmark: {result['entries']:,} entries ({result['originals']:,} originals, "
          f"{result['near_duplicates']:,} near-duplicates) from {result['feeds']} feeds over {result['days']:g} days")
    print(f"  time          {s['total']:.1f} s: the writer thread storing {s['store']:.1f} s, waiting for the workers' "
          f"fingerprints {s['waiting_for_fingerprints']:.1f} s (text generation, untimed: {s['generate_untimed']:.1f} s)")
    print(f"  throughput    {result['entries_per_second']:,.0f} entries/s (storing alone {result['store_per_second']:,.0f}/s)")
    print(f"  by tenth      {', '.join(str(r) for r in result['rate_by_tenth'])} entries/s")
    print(f"  memory        peak {result['peak_rss_mb']:.0f} MB: the larger of this process's peak RSS and the peak PSS "
          f"of it and its workers together ({result['tree_pss_mb']:.0f} MB); before the run {result['rss_before_run_mb']:.0f} MB; "
          f"database {result['database_mb']:.0f} MB{' at ' + result['database'] if result['database'] else ''}")
    pairs = result["pairs"]
    print(f"  pairs         true {pairs['true']:,}, predicted {pairs['predicted']:,}, correct {pairs['correct']:,}")
    print(f"  precision     {result['precision']:.4f}   recall {result['recall']:.4f}   "
          f"near-duplicates found {result['near_duplicates_found']:,}/{result['near_duplicates']:,}; "
          f"originals wrongly merged {result['originals_wrongly_merged']:,}; rules {result['rules']}")
    print("  recall by the true Jaccard similarity of a near-duplicate to its original:")
    for bucket, row in result["recall_by_true_jaccard"].items():
        if row["n"]:
            print(f"    {bucket}  {row['found']:>6,}/{row['n']:<6,}  {row['recall']:.3f}")
    for name, (target, ok) in result["targets"].items():
        value = result[name]
        relation = "<" if name == "peak_rss_mb" else ">="
        print(f"{'PASS' if ok else 'FAIL'}  {name} {value} (target {relation} {target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--dup-share", type=float, default=0.2)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--days", type=float, default=30.0, help="the originals' publication span")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--db", help="SQLite file to create (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="print the temporary database's path and keep it")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--no-dedup", action="store_true", help="store with near-duplicate detection off, for comparison")
    parser.add_argument("--what-if", action="store_true", help="replay the decisions with other MinHash/LSH parameters")
    parser.add_argument("--sample", type=int, default=3000, help="near-duplicate pairs for --what-if")
    args = parser.parse_args()
    if args.what_if:
        outcome = what_if(args)
        print(json.dumps(outcome, indent=2)) if args.json else report_what_if(outcome)
        return
    result = run(args)
    if result["database"] is None and not args.db:
        shutil.rmtree(result.pop("workdir"), ignore_errors=True)
    else:
        result.pop("workdir")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
