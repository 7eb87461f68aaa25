"""verl's PPO entry point with the entropy_dynamics trainers, the legacy trainer included.

    python -m entropy_dynamics.integrations.verl_main --config-path=... --config-name=... [overrides]

The same Hydra config and overrides as ``python -m verl.trainer.main_ppo`` (verl's
``ppo_trainer`` is the default config). Which trainer runs follows verl's own switch:
- ``trainer.use_v1=true`` (verl's default): verl's ``main`` itself, unchanged; the v1 trainer is
  chosen by ``trainer.v1.trainer_mode: entropy_sync`` (verl's trainer registry).
- ``trainer.use_v1=false``: verl's checks as in its ``main``, then verl's ``run_ppo`` with
  `TaskRunner` below. verl's legacy TaskRunner constructs ``RayPPOTrainer`` by name and has no
  setting to change it, so `EntropyTaskRunner.run` runs verl's own ``TaskRunner.run`` with that
  one name bound to `EntropyRayPPOTrainer` (a copy of the function's globals: verl's module is
  not changed, and nothing of verl's run is copied here).
"""

from __future__ import annotations

import types

import hydra
import ray
from verl.trainer import main_ppo, main_ppo_v0
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from . import verl as _plugin  # noqa: F401  (the losses and engine, in the TaskRunner process too)
from .verl_trainers import EntropyRayPPOTrainer

__all__ = ["EntropyTaskRunner", "TaskRunner", "main"]

VerlTaskRunner = main_ppo_v0.TaskRunner.__ray_metadata__.modified_class.__ray_actor_class__
"""verl's legacy TaskRunner class, as written (``main_ppo_v0.TaskRunner`` is its Ray actor)."""


def _with_trainer(run, trainer_cls):
    """verl's ``run`` with the global name ``RayPPOTrainer`` bound to ``trainer_cls``."""
    if (
        "RayPPOTrainer" not in run.__code__.co_names
        or run.__globals__.get("RayPPOTrainer") is not RayPPOTrainer
    ):
        raise RuntimeError(
            "verl's legacy TaskRunner.run no longer constructs RayPPOTrainer by name "
            "(this launcher follows verl 0.9.1's main_ppo_v0); use trainer.use_v1=true"
        )
    bound = dict(run.__globals__, RayPPOTrainer=trainer_cls)
    return types.FunctionType(run.__code__, bound, run.__name__, run.__defaults__, run.__closure__)


class EntropyTaskRunner(main_ppo_v0.BaseTaskRunner):
    """verl's legacy TaskRunner whose ``run`` constructs `trainer_cls` (`EntropyRayPPOTrainer`).

    It derives from verl's ``BaseTaskRunner`` (as verl's ``TaskRunner`` does, which adds nothing
    else): a subclass of the class behind verl's Ray actor would be pickled by value into the
    actor process (its module name resolves to the actor, not the class), which breaks verl's
    ``super()`` calls there.
    """

    trainer_cls = EntropyRayPPOTrainer

    def run(self, config):
        return _with_trainer(VerlTaskRunner.run, self.trainer_cls)(self, config)


TaskRunner = ray.remote(EntropyTaskRunner)
"""`EntropyTaskRunner` as a Ray actor, decorated as verl's (what ``run_ppo`` starts)."""


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config) -> None:
    if config.trainer.use_v1:
        return main_ppo.main(config)  # verl's main (hydra passes a given config straight through)
    # the checks of verl's main, then its run_ppo with our TaskRunner in place of its own
    auto_set_device(config)
    validate_config(
        config=config,
        use_reference_policy=need_reference_policy(config),
        use_critic=need_critic(config),
    )
    main_ppo.run_ppo(config, task_runner_class=TaskRunner)


if __name__ == "__main__":
    # the runner must be pickled by reference to this module, not to __main__
    from entropy_dynamics.integrations.verl_main import main as _main

    _main()
