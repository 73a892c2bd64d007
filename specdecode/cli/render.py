"""Terminal rendering of round events: accepted draft tokens, the target's own tokens and
(optionally) rejected draft tokens, each in its own style, streamed as rounds complete.

Text is decoded incrementally from the whole id sequence (so SentencePiece spaces and
multi-byte characters come out right) and split into the pieces each token added.
When stdout is not a terminal the same text is written plain, without styles.

What it does not: run models or compute statistics (it is handed both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.text import Text

__all__ = ["STYLES", "Status", "TokenStreamer", "describe_models", "legend", "stats_line"]

STYLES = {
    "accepted": "green",
    "target": "bold magenta",
    "rejected": "red strike dim",
    "prompt": "dim",
}


def legend() -> Text:
    t = Text("  ")
    t.append("accepted draft", STYLES["accepted"])
    t.append("  ")
    t.append("target's own token", STYLES["target"])
    t.append("  ")
    t.append("rejected draft", STYLES["rejected"])
    return t


class TokenStreamer:
    """Turns token ids into styled text pieces for one sequence."""

    def __init__(self, console: Console, decode: Callable[[Sequence[int]], str], show_rejected: bool) -> None:
        self.console = console
        self.decode = decode
        self.show_rejected = show_rejected
        self.ids: list[int] = []
        self.text = ""

    def _piece(self, token: int) -> str:
        self.ids.append(token)
        # decode the whole sequence and diff: right across SentencePiece spaces and
        # multi-token characters (a piece is only emitted once it decodes cleanly)
        full = self.decode(self.ids)
        if full.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
            return ""
        piece = full[len(self.text) :] if full.startswith(self.text) else full
        self.text = full
        return piece

    def round(self, accepted: Sequence[int], token: int | None, rejected: Sequence[int]) -> Text:
        out = Text()
        for t in accepted:
            out.append(self._piece(t), STYLES["accepted"])
        if self.show_rejected and rejected:
            # decoded in context (so word-initial spaces come out right), without keeping them
            shown = self.decode(self.ids + list(rejected))
            piece = shown[len(self.text) :] if shown.startswith(self.text) else self.decode(list(rejected))
            out.append(piece.replace("\n", " "), STYLES["rejected"])
        if token is not None:
            out.append(self._piece(token), STYLES["target"])
        return out


def stats_line(stats: dict) -> Text:
    acc = stats.get("acceptance_rate")
    be = stats.get("block_efficiency")
    parts = [
        f"{stats['new_tokens']} tokens",
        f"{stats['rounds']} rounds",
        "acceptance " + (f"{acc:.1%}" if acc is not None else "n/a"),
        "block efficiency " + (f"{be:.2f}" if be is not None else "n/a"),
        f"{stats['tokens_per_s']:.1f} tokens/s",
    ]
    return Text("  " + " · ".join(parts), style="dim")


class Status:
    """A one-line spinner on stderr while nothing else shows (loading models, compiling the first
    steps) when stderr is a terminal; nothing at all when it is piped or redirected."""

    def __init__(self, message: str) -> None:
        console = Console(stderr=True)
        self._status = console.status(message) if console.is_terminal else None
        if self._status is not None:
            self._status.start()

    def update(self, message: str) -> None:
        if self._status is not None:
            self._status.update(message)

    def stop(self) -> None:
        """Idempotent: called at the first output, and again on the way out."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> "Status":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def describe_models(settings) -> str:
    """`builtin:demo/target + builtin:demo/draft` / `X (ngram drafter)`: what is being loaded."""
    if settings.drafter == "model" and settings.draft:
        return f"{settings.target} + {settings.draft}"
    return f"{settings.target} ({settings.drafter} drafter)" if settings.drafter != "none" else str(settings.target)
