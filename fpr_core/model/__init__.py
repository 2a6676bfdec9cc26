"""The composable looped transformer: ``LoopedModel`` and its typed results."""
from fpr_core.model.looped import LoopedModel, LoopMap, LoopOutput
from fpr_core.solver import LoopTrace

__all__ = ["LoopedModel", "LoopMap", "LoopOutput", "LoopTrace"]
