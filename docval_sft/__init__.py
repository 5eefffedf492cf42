"""docval-sft: fine-tune a vision-language student on DocVAL Phase A traces with TRL's SFTTrainer.

The light, pure-Python pieces are imported here; modules that need torch/transformers (``build``, ``train``,
``tiny``) are imported on use, so ``import docval_sft`` stays fast.
"""

from .errors import DocvalError, Issue, Location
from .format import ParsedOutput, format_bbox, parse_output, render_target
from .records import LoadResult, PhaseARecord, load_records

__version__ = "0.1.0"

__all__ = [
    "DocvalError",
    "Issue",
    "LoadResult",
    "Location",
    "ParsedOutput",
    "PhaseARecord",
    "format_bbox",
    "load_records",
    "parse_output",
    "render_target",
]
