"""SkipPlan: which of a backbone's N candidate blocks are skipped, and the evidence for it.

A plan is always explicit: there is no default plan (the reference silently skipped [0,1,2,3]
when the flag was forgotten: B11 in docs/method.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import PlanError
from .io import atomic_write_text

RESULT_FORMAT = 1




@dataclass(frozen=True)
class SkipPlan:
    """`skip`: the sorted indices of the skipped candidates among `num_candidates` (0..N-1)."""

    skip: tuple[int, ...]
    num_candidates: int

    def __post_init__(self) -> None:
        n = self.num_candidates
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise PlanError(f"num_candidates={n!r} must be a positive integer")
        skip = tuple(self.skip)
        for i in skip:
            if not isinstance(i, int) or isinstance(i, bool):
                raise PlanError(f"skip index {i!r} is not an integer")
            if not 0 <= i < n:
                raise PlanError(f"skip index {i} is out of range; expected 0..{n - 1} for {n} candidates")
        dupes = sorted({i for i in skip if skip.count(i) > 1})
        if dupes:
            raise PlanError(f"skip indices {dupes} appear more than once in {list(skip)}")
        if len(skip) >= n:
            raise PlanError(f"cannot skip {len(skip)} of {n} candidates; k must be < {n} (at least one block must run)")
        object.__setattr__(self, "skip", tuple(sorted(skip)))

    @property
    def k(self) -> int:
        return len(self.skip)

    @property
    def keep(self) -> tuple[int, ...]:
        s = set(self.skip)
        return tuple(i for i in range(self.num_candidates) if i not in s)

    @classmethod
    def none(cls, num_candidates: int) -> SkipPlan:
        return cls((), num_candidates)

    @classmethod
    def last(cls, k: int, num_candidates: int) -> SkipPlan:
        check_k(k, num_candidates)
        return cls(tuple(range(num_candidates - k, num_candidates)), num_candidates)

    @classmethod
    def parse(cls, text: str, num_candidates: int) -> SkipPlan:
        """'3,5,7' or '[3, 5, 7]' or '' (no skip)."""
        body = text.strip().strip("[]()").strip()
        if not body:
            return cls.none(num_candidates)
        try:
            idx = tuple(int(t) for t in body.replace(" ", ",").split(",") if t)
        except ValueError:
            raise PlanError(f"plan {text!r} is not a comma-separated list of block indices like '3,5'") from None
        return cls(idx, num_candidates)

    def to_dict(self) -> dict:
        return {"skip": list(self.skip), "num_candidates": self.num_candidates}

    @classmethod
    def from_dict(cls, d: dict) -> SkipPlan:
        if not isinstance(d, dict) or "skip" not in d or "num_candidates" not in d:
            raise PlanError(f"a plan must be a mapping with 'skip' and 'num_candidates', got {d!r}")
        if not isinstance(d["skip"], list):
            raise PlanError(f"plan 'skip' must be a list of indices, got {d['skip']!r}")
        return cls(tuple(d["skip"]), d["num_candidates"])

    def __str__(self) -> str:
        return f"skip {list(self.skip)} of {self.num_candidates}"


def check_k(k: int, num_candidates: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise PlanError(f"k={k!r} must be a non-negative integer")
    if k >= num_candidates:
        raise PlanError(f"k={k} must be < the number of candidates ({num_candidates}); at least one block must run")


@dataclass
class SearchResult:
    """What a search (or a cheap scorer) hands to `train`: the plan and why.

    `scores[i]` is candidate i's skippability (higher = more skippable): the final gates for DAS.
    """

    plan: SkipPlan
    method: str
    scores: list[float]
    seed: int
    history: list[dict[str, Any]] = field(default_factory=list)  # per policy update: step, gates, rewards
    config: dict[str, Any] = field(default_factory=dict)
    base_model: dict[str, Any] = field(default_factory=dict)  # name_or_path + fingerprint
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plan"] = self.plan.to_dict()
        return {"format": RESULT_FORMAT, "kind": "archskip.search_result", **d}

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        if not isinstance(d, dict) or d.get("kind") != "archskip.search_result":
            raise PlanError("not an archskip search result (missing kind='archskip.search_result')")
        if d.get("format", 0) > RESULT_FORMAT:
            raise PlanError(f"search result format {d.get('format')} is newer than this archskip ({RESULT_FORMAT}); upgrade")
        missing = [k for k in ("plan", "method", "scores", "seed") if k not in d]
        unknown = sorted(set(d) - {f.name for f in fields(cls)} - {"format", "kind"})
        if missing or unknown:
            raise PlanError(f"search result is incomplete or corrupt: {'missing ' + str(missing) if missing else ''}"
                            f"{'; ' if missing and unknown else ''}{'unknown keys ' + str(unknown) if unknown else ''}")
        d = {k: v for k, v in d.items() if k not in ("format", "kind")}
        d["plan"] = SkipPlan.from_dict(d["plan"])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> SearchResult:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlanError(f"search result {str(path)!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"search result {str(path)!r} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None


def load_plan_source(spec: str | SkipPlan | SearchResult | None) -> str | SkipPlan | SearchResult | None:
    """A path to a search result file becomes the SearchResult; anything else is returned as it is.

    The one place that decides whether a string names a search result (a `.json` path or an existing file) or is
    an index list / 'none'. No plan (None or a blank string) is an error: the caller must say what to skip.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        raise PlanError(f"no skip plan given{' (the plan is empty)' if spec is not None else ''}: pass a search result "
                        "file, an index list like '3,5', or 'none' for no skip")
    if isinstance(spec, str) and spec.strip().lower() != "none" and (spec.endswith(".json") or Path(spec).is_file()):
        return SearchResult.load(spec)
    return spec


def resolve_plan(spec: str | SkipPlan | SearchResult | None, num_candidates: int) -> SkipPlan:
    """A plan from a SkipPlan, a SearchResult, a path to a search result JSON, or an index list.

    `None` and a blank string are errors on purpose: the caller must say what to skip ('none' for no skip).
    """
    spec = load_plan_source(spec)
    if isinstance(spec, SearchResult):
        spec = spec.plan
    if isinstance(spec, str):
        if spec.strip().lower() == "none":
            return SkipPlan.none(num_candidates)
        spec = SkipPlan.parse(spec, num_candidates)
    if spec.num_candidates != num_candidates:
        raise PlanError(f"plan {spec} was made for {spec.num_candidates} candidates; this model has {num_candidates}")
    return spec
