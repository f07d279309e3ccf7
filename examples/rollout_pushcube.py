"""Roll out PAR on PushCube on the CPU and write a video of the real camera (left) beside the
frames the model imagined (right).

    python examples/rollout_pushcube.py                          # shipped checkpoint "par-pushcube"
    python examples/rollout_pushcube.py --checkpoint runs/pushcube/finetune/final --episodes 3
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from envs import VideoRecorder, control_freq, make_env
from par_agent import PARPolicy
from par_agent.evaluate import DEFAULT_SEED_START


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="par-pushcube", help="built-in name, checkpoint folder or hub id")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED_START, help="seed of the first episode")
    p.add_argument("--out", default="outputs/rollout", help="folder for the videos")
    p.add_argument("--max-episode-steps", type=int, default=None)
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the policy (results are "
                   "deterministic for a given count)")
    args = p.parse_args()

    overrides = {"num_inference_steps": args.num_inference_steps} if args.num_inference_steps else {}
    try:
        policy = PARPolicy.from_pretrained(args.checkpoint, device=args.device, num_threads=args.threads, **overrides)
    except FileNotFoundError as e:
        print(f"cannot load {args.checkpoint!r}: {e}", file=sys.stderr)
        return 2
    limit = {"max_episode_steps": args.max_episode_steps} if args.max_episode_steps else {}
    env = make_env(policy.task, **{**policy.env_kwargs, **limit})  # the env the checkpoint was trained for
    recorder = VideoRecorder(args.out, fps=control_freq(env))
    successes = 0
    for ep in range(args.episodes):
        obs, info = env.reset(seed=args.seed + ep)
        policy.reset()
        done, step, success, t_policy = False, 0, False, 0.0
        while not done:
            t0 = time.perf_counter()
            action, _ = policy.predict(obs, episode_start=np.array([step == 0]), deterministic=True)
            t_policy += time.perf_counter() - t0
            recorder.add(obs["rgb"], policy.predicted_frames()[0], step=step, success=success)
            obs, reward, terminated, truncated, info = env.step(action)
            success = success or bool(info["success"])
            done = terminated or truncated
            step += 1
        recorder.add(obs["rgb"], None, step=step, success=success)
        path = recorder.close_episode(success=success)
        successes += success
        print(f"episode {ep} (seed {args.seed + ep}): {'success' if success else 'failure'} after {step} steps, "
              f"policy {1000 * t_policy / step:.1f} ms per control step; video: {path}")
    env.close()
    print(f"success {successes}/{args.episodes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
