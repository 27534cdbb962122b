"""Finding the skip plan: the DAS policy and search loop, cheap baselines, and the METHODS registry.

`METHODS[name](SearchRun(...))` returns a `SearchResult`; `archskip search --search.method NAME` and
`pipeline.search` dispatch through it. The imports below register the built-in methods.
"""

# isort: off
from . import das, baselines, removal  # noqa: F401  (register the built-in methods, DAS first)
# isort: on
from .baselines import block_influence, exhaustive, last_k, random_plan
from .das import DASHooks, run_search
from .policy import SkipPolicy, log_prob
from .registry import METHODS, SearchMethod, SearchRun, register_method
from .supernet import RandomConfigs

RESULT_FILE = "search_result.json"
"""The file name `archskip search` writes its SearchResult to, in the output directory."""

__all__ = [
    "METHODS", "RESULT_FILE", "DASHooks", "RandomConfigs", "SearchMethod", "SearchRun", "SkipPolicy", "block_influence",
    "exhaustive", "last_k", "log_prob", "random_plan", "register_method", "run_search",
]
