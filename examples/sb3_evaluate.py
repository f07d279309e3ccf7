"""Evaluate a PAR policy with Stable-Baselines3's own ``evaluate_policy`` on a vector env of
ManiSkill tasks: PARPolicy is a drop-in SB3 policy.

    python examples/sb3_evaluate.py --checkpoint par-pushcube --n-envs 2 --episodes 4
"""
from __future__ import annotations

import argparse

from stable_baselines3.common.evaluation import evaluate_policy

from envs import make_vec_env
from par_agent import PARPolicy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="par-pushcube")
    p.add_argument("--task", default=None)
    p.add_argument("--n-envs", type=int, default=2)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the policy")
    args = p.parse_args()

    policy = PARPolicy.from_pretrained(args.checkpoint, task=args.task, num_threads=args.threads)
    vec_env = make_vec_env(policy.task, args.n_envs, seed=args.seed, **policy.env_kwargs)
    successes = []

    def callback(locals_, globals_):  # evaluate_policy calls this after every step
        if locals_["done"]:
            successes.append(bool(locals_["info"].get("success", False)))

    mean_reward, std_reward = evaluate_policy(policy, vec_env, n_eval_episodes=args.episodes,
                                              deterministic=True, callback=callback)
    print(f"mean reward {mean_reward:.2f} +/- {std_reward:.2f}; "
          f"success {sum(successes)}/{len(successes)} episodes")
    vec_env.close()


if __name__ == "__main__":
    main()
