"""archskip: Dynamic Architecture Skipping (DAS, Wu et al., NeurIPS 2023) for Hugging Face transformers.

Freeze a pretrained model, give it small adapters, search which blocks the task does not need,
replace them by light adapters and remove them: cheap to train, faster at inference.
"""

__version__ = "0.1.0"

from .config import AdapterConfig, DataConfig, ModelConfig, RunConfig, SearchConfig, TaskConfig, TrainConfig  # noqa: E402
from .plan import SearchResult, SkipPlan  # noqa: E402
from .policy import SkipPolicy  # noqa: E402
from .skipping import SkipModel  # noqa: E402

__all__ = [
    "AdapterConfig", "DataConfig", "ModelConfig", "RunConfig", "SearchConfig", "SearchResult", "SkipModel",
    "SkipPlan", "SkipPolicy", "TaskConfig", "TrainConfig", "__version__",
]
