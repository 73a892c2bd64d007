"""Drafters: what proposes tokens for the target to verify."""

from .base import Draft, Drafter, DraftState, align_vocab
from .draft_model import ModelDrafter

__all__ = ["Draft", "DraftState", "Drafter", "ModelDrafter", "align_vocab"]
