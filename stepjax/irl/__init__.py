"""Imitation and inverse RL on environments: PDEIL (density-estimation rewards), GAIL, AIRL, behaviour cloning,
demonstrations, density estimators and evaluation helpers; all pure JAX, vmappable over seeds."""

from stepjax.irl.adversarial import AdversarialConfig, AIRLReward, GAILReward
from stepjax.irl.bc import BCConfig, make_bc_train
from stepjax.irl.demos import DemoSource, collect_demos, load_demos, save_demos
from stepjax.irl.densities import Mixture, fit_density, fit_gaussian, fit_gmm, fit_kde, log_prob, marginal
from stepjax.irl.horizon import VariableHorizonError, check_fixed_horizon
from stepjax.irl.pdeil import PDEILConfig, PDEILReward, pdeil_log_ratio, shape_reward
from stepjax.irl.train import ALGORITHMS, make_irl_train, make_reward_model

__all__ = [
    "ALGORITHMS",
    "AIRLReward",
    "AdversarialConfig",
    "BCConfig",
    "DemoSource",
    "GAILReward",
    "Mixture",
    "PDEILConfig",
    "PDEILReward",
    "VariableHorizonError",
    "check_fixed_horizon",
    "collect_demos",
    "fit_density",
    "fit_gaussian",
    "fit_gmm",
    "fit_kde",
    "load_demos",
    "log_prob",
    "make_bc_train",
    "make_irl_train",
    "make_reward_model",
    "marginal",
    "pdeil_log_ratio",
    "save_demos",
    "shape_reward",
]
