"""Call TRL 1.16's inline loss code (``DPOTrainer._compute_loss``, ``GRPOTrainer._compute_loss``) on given log-probs.

TRL has no standalone loss functions: the maths lives inside the trainers' ``_compute_loss`` methods. These helpers
call those methods unbound, with a minimal stand-in ``self`` (the attributes the method reads) and a stand-in model
that returns the given per-token log-probs, so the TRL code path runs unchanged on our inputs. Pinned to
``trl==1.16.0`` because the attributes read are private.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch
from trl import DPOTrainer, GRPOTrainer


class _Accelerator:
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


class _StandInLM:
    """Returns fixed per-token log-probs (zero outside the completion mask, as TRL's fused head does)."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, log_probs: torch.Tensor, log_sum_sq_probs: torch.Tensor | None = None):
        self.log_probs, self.log_sum_sq_probs = log_probs, log_sum_sq_probs

    def __call__(self, labels=None, **kwargs):
        valid = (labels[:, 1:] != -100).to(self.log_probs.dtype)
        shape = self.log_probs.shape
        return SimpleNamespace(
            log_probs=self.log_probs * valid,
            entropy=torch.zeros(shape),
            mean_logits=torch.zeros(shape),
            is_top1=torch.zeros(shape, dtype=torch.bool),
            log_sum_sq_probs=self.log_sum_sq_probs,
            aux_loss=None,
        )


def trl_dpo_loss(
    chosen: np.ndarray,
    rejected: np.ndarray,
    chosen_mask: np.ndarray,
    rejected_mask: np.ndarray,
    ref_chosen: np.ndarray,
    ref_rejected: np.ndarray,
    *,
    beta: float = 0.1,
    loss_type=("sigmoid",),
    loss_weights=None,
    label_smoothing: float = 0.0,
    f_divergence: str = "reverse_kl",
    f_alpha: float = 1.0,
    discopop_tau: float = 0.05,
    ld_alpha: float | None = None,
    log_sum_sq: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, np.ndarray, np.ndarray, dict]:
    """TRL's DPO loss for ``[P, L]`` per-token log-probs and masks; references are ``[P]`` sums (precomputed
    path) or ``[P, L]`` per token (reference-model path). Returns (loss, d loss / d chosen, d loss / d rejected,
    logged metrics)."""
    pairs = chosen.shape[0]
    policy = torch.tensor(np.concatenate([chosen, rejected]), dtype=torch.float32, requires_grad=True)
    mask = np.concatenate([chosen_mask, rejected_mask]).astype(np.int64)
    completion_mask = torch.tensor(np.concatenate([np.zeros((2 * pairs, 1), np.int64), mask], axis=1))
    inputs = {
        "input_ids": torch.ones_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
    }
    per_token_ref = np.ndim(ref_chosen) == 2
    if not per_token_ref:
        inputs["ref_chosen_logps"] = torch.tensor(ref_chosen, dtype=torch.float32)
        inputs["ref_rejected_logps"] = torch.tensor(ref_rejected, dtype=torch.float32)
    lssp = None if log_sum_sq is None else torch.tensor(np.concatenate(log_sum_sq), dtype=torch.float32)
    model = _StandInLM(policy, lssp)
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    ref_model = None
    if per_token_ref:
        ref_model = _StandInLM(torch.tensor(np.concatenate([ref_chosen, ref_rejected]), dtype=torch.float32))
    trainer = SimpleNamespace(
        model=model,
        ref_model=ref_model,
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=ld_alpha,
        precompute_ref_logps=not per_token_ref,
        f_divergence_type=f_divergence,
        f_alpha_divergence_coef=f_alpha,
        loss_types=types,
        loss_weights=[1.0] * len(types) if loss_weights is None else list(loss_weights),
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=log_sum_sq is not None,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    grad = policy.grad.numpy()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.item(), grad[:pairs], grad[pairs:], metrics


def trl_grpo_loss(
    log_probs: np.ndarray,
    advantages: np.ndarray,
    mask: np.ndarray,
    *,
    old_log_probs: np.ndarray | None = None,
    ref_log_probs: np.ndarray | None = None,
    loss_type: str = "dapo",
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    max_completion_length: int | None = None,
    use_bias_correction_kl: bool = False,
) -> tuple[float, np.ndarray, dict]:
    """TRL's GRPO loss on ``[B, L]`` per-token log-probs, one optimizer step without accumulation, one process.
    Returns (loss, d loss / d log_probs, logged metrics)."""
    batch, length = log_probs.shape
    policy = torch.tensor(log_probs, dtype=torch.float32, requires_grad=True)
    completion_mask = torch.tensor(mask, dtype=torch.int64)
    inputs = {
        "prompt_ids": torch.ones((batch, 2), dtype=torch.int64),
        "prompt_mask": torch.ones((batch, 2), dtype=torch.int64),
        "completion_ids": torch.ones((batch, length), dtype=torch.int64),
        "completion_mask": completion_mask,
        "advantages": torch.tensor(advantages, dtype=torch.float32),
        "num_items_in_batch": completion_mask.sum().float(),
    }
    if old_log_probs is not None:
        inputs["old_per_token_logps"] = torch.tensor(old_log_probs, dtype=torch.float32)
    if ref_log_probs is not None:
        inputs["ref_per_token_logps"] = torch.tensor(ref_log_probs, dtype=torch.float32)
    model = SimpleNamespace(training=True)
    trainer = SimpleNamespace(
        model=model,
        _get_per_token_logps_and_entropies=lambda *a, **k: (policy, torch.zeros(batch, length), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=importance_sampling_level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length or length,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        args=SimpleNamespace(delta=delta, use_bias_correction_kl=use_bias_correction_kl, steps_per_generation=1),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    loss = GRPOTrainer._compute_loss(trainer, model, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.item(), policy.grad.numpy(), metrics
