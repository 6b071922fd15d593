"""The variable-horizon guard (imitation's ``allow_variable_horizon``).

A learned reward on an environment whose episodes can end early also rewards episode length: a reward that is
positive on average pays the agent to survive (GAIL's ``softplus(D) > 0``, PDEIL's ratio ``r >= 0``), a negative one
pays it to die (AIRL's ``f - log pi`` often is). On CartPole the first bias even solves the task without imitating
anything. So the IRL trainers refuse such environments unless they are made fixed-horizon (``FixedHorizon``:
absorb after termination), the learner treats termination as entering an absorbing state whose learned reward it
bootstraps (``EnvPPOConfig.absorbing_bootstrap``), or the caller opts in.
"""

from __future__ import annotations

from stepjax.rl.envs.base import Environment


class VariableHorizonError(ValueError):
    """An IRL trainer was given an environment whose episodes can end before the time limit."""


def check_fixed_horizon(env: Environment, *, allow_variable_horizon: bool, algorithm: str) -> None:
    """Raises ``VariableHorizonError`` when ``env`` can terminate early and the caller did not allow it."""
    if env.can_terminate and not allow_variable_horizon:
        raise VariableHorizonError(
            f"{algorithm}: {env.name} can end episodes before its time limit (variable horizon), which biases a "
            "learned reward towards longer or shorter episodes. Use a fixed horizon "
            f"(stepjax.rl.envs.make({env.name!r}, fixed_horizon=True)), bootstrap an absorbing state "
            "(EnvPPOConfig.absorbing_bootstrap=True) or pass allow_variable_horizon=True."
        )
