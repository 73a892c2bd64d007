"""Drafters: what proposes tokens for the target to verify."""

from ..decoding.drafting import Draft, Drafter, DraftState, align_vocab
from .draft_model import ModelDrafter
from .early_exit import EarlyExitDrafter
from .ngram import NgramDrafter

__all__ = ["Draft", "DraftState", "Drafter", "EarlyExitDrafter", "ModelDrafter", "NgramDrafter", "align_vocab"]
