"""The knowledge base: help articles in a SQLite FTS5 index, ranked by BM25."""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import tomllib
from importlib import resources
from typing import Final

import msgspec

from actors import ToolCall, tool

CORPUS: Final = "articles.toml"
_WORDS: Final = re.compile(r"[A-Za-z0-9]+")
_MAX_TERMS: Final = 24
_STOPWORDS: Final = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "no",
        "not",
        "of",
        "on",
        "or",
        "our",
        "so",
        "that",
        "the",
        "their",
        "them",
        "there",
        "this",
        "to",
        "up",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)
# Hits scoring under this share of the best one are noise, not references.
_RELEVANT_SHARE: Final = 0.3
# Title matches weigh most, then tags, then the body (bm25 column weights).
_RANK: Final = "bm25(articles, 0.0, 4.0, 2.0, 1.0)"


class Article(msgspec.Struct, frozen=True, kw_only=True):
    """One help article."""

    slug: str
    title: str
    tags: str = ""
    body: str


class _Corpus(msgspec.Struct, frozen=True, kw_only=True):
    base_url: str = "https://help.example.com/articles"
    articles: list[Article]


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """A ranked search result."""

    title: str
    url: str
    score: float


class Search(msgspec.Struct, frozen=True, kw_only=True):
    """Arguments of `kb.search`."""

    query: str
    limit: int = msgspec.field(default=3)


class Results(msgspec.Struct, frozen=True, kw_only=True):
    """Result of `kb.search`: best first."""

    hits: list[Hit]


class KnowledgeBase:
    """An in-memory FTS5 index over articles; safe to share between threads."""

    def __init__(self, articles: list[Article], *, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE articles USING fts5(slug UNINDEXED, title, tags, body,"
            " tokenize = 'porter unicode61')"
        )
        self._db.executemany(
            "INSERT INTO articles VALUES (?, ?, ?, ?)",
            [(a.slug, a.title, a.tags, a.body) for a in articles],
        )
        self.size = len(articles)

    @classmethod
    def from_toml(cls, text: str) -> KnowledgeBase:
        """Index the `[[articles]]` of a TOML document (see `articles.toml`)."""
        corpus = msgspec.convert(tomllib.loads(text), _Corpus)
        return cls(corpus.articles, base_url=corpus.base_url)

    def search(self, query: str, *, limit: int = 3) -> list[Hit]:
        """Articles matching any word of `query`, best first (none for no words)."""
        words = (w.lower() for w in _WORDS.findall(query))
        terms = [w for w in words if w not in _STOPWORDS][:_MAX_TERMS]
        if not terms or limit < 1:
            return []
        # Each word quoted: user text never reaches FTS5's query syntax.
        match = " OR ".join(f'"{t}"' for t in terms)
        with self._lock:
            rows = self._db.execute(
                f"SELECT slug, title, {_RANK} AS rank FROM articles"  # noqa: S608 - constant
                " WHERE articles MATCH ? ORDER BY rank LIMIT ?",
                (match, limit),
            ).fetchall()
        if not rows:
            return []
        best = -rows[0][2]
        return [
            Hit(title=t, url=f"{self.base_url}/{s}", score=round(-r, 4))
            for s, t, r in rows
            if -r >= best * _RELEVANT_SHARE
        ]


@functools.cache
def shipped_knowledge_base() -> KnowledgeBase:
    """The index of the articles shipped with this package (built once)."""
    text = resources.files("actors.support").joinpath(CORPUS).read_text(encoding="utf-8")
    return KnowledgeBase.from_toml(text)


@tool("kb.search", permission="kb:read")
def search_kb(args: Search, call: ToolCall) -> Results:  # noqa: ARG001 - read-only
    """Search the help articles; return up to `limit` ranked links."""
    return Results(hits=shipped_knowledge_base().search(args.query, limit=min(args.limit, 10)))
