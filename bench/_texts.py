"""Varied 15-25-word texts for load tests, never the same one twice within a run.

Each text is cut from a random run of sentences of the demo corpus (`models.corpus`), so its
length and vocabulary look like the platform's real inputs and no two requests of a run can
hit the gateway's cache by accident.
"""

from __future__ import annotations

import random

from models.corpus import generate_demo_corpus

MIN_WORDS = 15
MAX_WORDS = 25


class TextPool:
    """Hands out unique texts of 15-25 words, deterministically for a seed."""

    def __init__(self, seed: int = 0, base_sentences: int = 6000):
        self._rng = random.Random(seed)
        self._base = [r["text"].split() for r in generate_demo_corpus(base_sentences, seed=seed)]
        self._seen: set[str] = set()

    def take(self, n: int) -> list[str]:
        """`n` texts never handed out before by this pool."""
        out: list[str] = []
        while len(out) < n:
            text = self._one()
            if text not in self._seen:
                self._seen.add(text)
                out.append(text)
        return out

    def _one(self) -> str:
        target = self._rng.randint(MIN_WORDS, MAX_WORDS)
        words = list(self._rng.choice(self._base))
        while len(words) < target:
            words += self._rng.choice(self._base)
        return " ".join(words[:target])
