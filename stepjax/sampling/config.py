"""``SamplingConfig``: how the KV-cache sampler picks tokens and when a row stops."""

from __future__ import annotations

import dataclasses
from typing import Any

FINISH_STOP = 1  # the row sampled one of its stop tokens (kept in the output)
FINISH_LENGTH = 2  # the row reached its max-new-tokens budget


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (hashable: a change recompiles the decode loop; per-row budgets and stop sets are
    arguments of ``generate`` and do not).

    Logits are processed in Hugging Face's order: repetition ban, then (unless greedy) temperature, top-k, top-p,
    min-p; then argmax (greedy) or a categorical draw.

    Attributes:
      max_new_tokens: the output buffer width and the default per-row budget.
      greedy: argmax decoding (``temperature == 0`` means the same); temperature/top-k/top-p/min-p are then unused.
      temperature: divides the logits (> 0).
      top_k: keep the ``k`` largest logits (ties with the k-th kept, as HF); 0 disables.
      top_p: keep the smallest prefix of tokens, by decreasing probability, whose mass reaches ``top_p``; 1 disables.
      min_p: keep tokens with probability >= ``min_p`` x the largest probability; 0 disables.
      num_samples: completions per prompt; output rows are prompt-major (row ``b * n + j`` = sample ``j`` of
        prompt ``b``), i.e. GRPO groups are consecutive rows.
      stop_tokens: default stop set for every row (a sampled stop token ends the row and is kept).
      pad_id: fills the output after a row's end.
      repetition_window / repetition_count: the Step-Audio repetition ban: once a row holds at least
        ``repetition_window`` tokens (prompt included), if its last token occurs >= ``repetition_count`` times
        (itself included) among its last ``repetition_window`` tokens, that token's logit becomes -inf.
        Step-Audio uses 10 and 2 (``count / 10 > 0.1``); a window of 0 disables the rule.
      processed_logprobs: also return log-probs of the sampled tokens under the processed distribution.
      cache_dtype: KV-cache dtype name (default: the model's compute dtype).
    """

    max_new_tokens: int = 128
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    num_samples: int = 1
    stop_tokens: tuple[int, ...] = ()
    pad_id: int = 0
    repetition_window: int = 0
    repetition_count: int = 2
    processed_logprobs: bool = False
    cache_dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "stop_tokens", tuple(int(t) for t in self.stop_tokens))
        self.validate()

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first bad field."""
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0.0, "temperature must be >= 0 (0 = greedy)"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
            (self.num_samples >= 1, "num_samples must be >= 1"),
            (self.repetition_window >= 0, "repetition_window must be >= 0 (0 = off)"),
            (self.repetition_count >= 1, "repetition_count must be >= 1"),
            (all(t >= 0 for t in self.stop_tokens), "stop_tokens must be non-negative ids"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingConfig: {message} (got {self})")

    def replace(self, **changes: Any) -> SamplingConfig:
        return dataclasses.replace(self, **changes)
