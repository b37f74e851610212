"""The suggestion model: what the classifier says about one order."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


class ProtocolScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    protocol: str
    probability: float


class Suggestion(BaseModel):
    """Every catalog protocol with its probability, the choice, and whether to abstain."""

    model_config = ConfigDict(frozen=True)

    scores: tuple[ProtocolScore, ...]  # every catalog protocol, most probable first
    protocol: str
    confidence: float
    abstained: bool = False
    abstain_reason: str = ""
    model_version: str
    catalog_version: str
    prompt_version: str
    raw_message_id: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def top(self, k: int = 3) -> tuple[ProtocolScore, ...]:
        return self.scores[:k]
