"""bottleneck: a drop-in information-bottleneck mask layer for PyTorch models.

``attach(model)`` wraps a model so it learns which input units (points, pixels
or patches, tokens) it needs; the mask explains predictions, makes inference
cheaper by removing dropped units, and feeds bias audits.
"""

from __future__ import annotations

from .audit_report import AuditReport
from .bias_audit import AuditData, audit
from .errors import BottleneckError, CollapsedMaskWarning, FaithfulnessWarning
from .explanation import Explanation
from .gates import Gate
from .hookspecs import hookimpl
from .io import load, load_mask, save_mask
from .layer import MaskLayer, MaskResult
from .modality import Modality
from .plugins import get_plugin_manager, register, unregister
from .train import evaluate, fit
from .units import Units
from .wrap import MaskedModel, MaskedOutput, SparseOutput, attach

__version__ = "0.1.0"

__all__ = [
    "AuditData",
    "AuditReport",
    "BottleneckError",
    "CollapsedMaskWarning",
    "FaithfulnessWarning",
    "Explanation",
    "Gate",
    "MaskLayer",
    "MaskResult",
    "MaskedModel",
    "MaskedOutput",
    "Modality",
    "SparseOutput",
    "Units",
    "attach",
    "audit",
    "evaluate",
    "fit",
    "get_plugin_manager",
    "hookimpl",
    "load",
    "load_mask",
    "register",
    "save_mask",
    "unregister",
]
