"""archskip: Dynamic Architecture Skipping (DAS, Wu et al., NeurIPS 2023) for Hugging Face transformers.

Freeze a pretrained model, give it small adapters, search which blocks the task does not need,
replace them by light adapters and remove them: cheap to train, faster at inference.
"""

__version__ = "0.1.0"

from .config import AdapterConfig, DataConfig, ModelConfig, RunConfig, SearchConfig, TaskConfig, TrainConfig
from .plan import SearchResult, SkipPlan
from .search.policy import SkipPolicy
from .skipping import SkipModel

__all__ = [
    "AdapterConfig", "DataConfig", "ModelConfig", "RunConfig", "SearchConfig", "SearchResult", "SkipModel",
    "SkipPlan", "SkipPolicy", "TaskConfig", "TrainConfig", "__version__",
]
