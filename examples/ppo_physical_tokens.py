"""PPO on PAR's physical tokens: PushCube with a dense reward, observations = the frame tokens and
normalised state of a PAR checkpoint (par_agent.PhysicalTokenObservation), policy features from
par_agent.sb3.PhysicalTokenExtractor.

    python examples/ppo_physical_tokens.py --timesteps 200000 --n-envs 4           # checkpoint par-pushcube
    python examples/ppo_physical_tokens.py --checkpoint runs/pushcube/finetune/final --video

Writes ``ppo_tokens.zip`` (the SB3 model), ``progress.csv`` (SB3 log), ``metrics.json`` (final
evaluation) and, with ``--video``, an MP4 of one evaluation episode (camera frame | the frame the
tokenizer reconstructs from the agent's tokens) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecMonitor
from tqdm.auto import tqdm

from envs import VideoRecorder, control_freq, make_env
from par_agent.tokens import PhysicalTokenObservation, make_token_vec_env
from par_agent.config import PARConfig
from par_agent.evaluate import DEFAULT_SEED_START
from par_agent.hub import CONFIG_NAME, resolve
from par_agent.sb3 import PhysicalTokenExtractor

TOKEN_KEYS = ("frame_tokens", "state")


class TqdmCallback(BaseCallback):
    """A tqdm progress bar over timesteps (SB3's own ``progress_bar=True`` needs ``rich``)."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total, self.bar = total, None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.total, unit="step", desc="ppo")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class SuccessRateCallback(BaseCallback):
    """Logs ``rollout/success_rate``: ManiSkill's ``info["success"]`` at the end of each episode."""

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"]):
            if done:
                self.logger.record_mean("rollout/success_rate", float(info.get("success", False)))
        return True


def load_config(checkpoint: str) -> tuple[Path, PARConfig]:
    folder = resolve(checkpoint)
    return folder, PARConfig.from_json(folder / CONFIG_NAME)


def record_video(model: PPO, task: str, folder: Path, cfg: PARConfig, env_kwargs: dict, out: Path, seed: int) -> Path:
    """One deterministic episode: the camera frame beside the tokenizer's reconstruction of the tokens."""
    env = PhysicalTokenObservation.from_pretrained(
        make_env(task, camera_size=cfg.image_size, **env_kwargs), folder, keep_rgb=True)
    recorder = VideoRecorder(out, fps=control_freq(env), prefix="ppo_tokens")
    obs, _ = env.reset(seed=seed)
    done, step, success = False, 0, False
    while not done:
        seen = env.tokenizer.decode(torch.from_numpy(obs["frame_tokens"])).numpy()
        recorder.add(obs["rgb"], seen, step=step, success=success, text="(right: the tokens decoded)")
        action, _ = model.predict({k: obs[k] for k in TOKEN_KEYS}, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        success = success or bool(info["success"])
        done, step = terminated or truncated, step + 1
    path = recorder.close_episode(success=success)
    env.close()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="par-pushcube", help="PAR checkpoint: built-in name, folder or hub id")
    p.add_argument("--task", default="PushCube-v1")
    p.add_argument("--timesteps", type=int, default=200_000)
    p.add_argument("--n-envs", type=int, default=4)
    p.add_argument("--vec-env", choices=("subproc", "dummy"), default="subproc",
                   help="subproc: one process per env (parallel rendering); dummy: all in this process")
    p.add_argument("--control-mode", default="pd_joint_delta_pos",
                   help="ManiSkill controller; delta joint targets are much easier for RL than PAR's pd_joint_pos")
    p.add_argument("--max-episode-steps", type=int, default=50)
    p.add_argument("--n-steps", type=int, default=128, help="PPO rollout length per env")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-epochs", type=int, default=8)
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--features-dim", type=int, default=128)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video", action="store_true", help="record one evaluation episode")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per process (small networks and one-frame encodes gain nothing from more)")
    p.add_argument("--device", default="cpu", help="device of the tokenizers and of PPO")
    p.add_argument("--out", default="outputs/ppo_tokens")
    args = p.parse_args(argv)

    torch.set_num_threads(args.torch_threads)
    try:
        folder, cfg = load_config(args.checkpoint)
    except FileNotFoundError as e:
        print(f"cannot load PAR checkpoint {args.checkpoint!r}: {e}\nTrain one (examples/train_pushcube.sh, "
              f"par-train) and pass its folder with --checkpoint.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = dict(max_episode_steps=args.max_episode_steps, reward_mode="normalized_dense",
                      control_mode=args.control_mode)
    print(f"tokens from {folder}: {cfg.frame_tokens} frame tokens x {cfg.token_dim} + state {cfg.state_dim}, "
          f"camera {cfg.image_size}px; {args.n_envs} {args.vec_env} envs")

    vec = VecMonitor(make_token_vec_env(args.task, args.n_envs, folder, seed=args.seed, vec_env_cls=args.vec_env,
                                        device=args.device, torch_threads=args.torch_threads, **env_kwargs),
                     info_keywords=("success",))
    model = PPO(
        "MultiInputPolicy", vec, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
        gamma=args.gamma, gae_lambda=0.9, learning_rate=args.lr, seed=args.seed, device=args.device,
        policy_kwargs=dict(features_extractor_class=PhysicalTokenExtractor,
                           features_extractor_kwargs=dict(features_dim=args.features_dim),
                           net_arch=dict(pi=[128, 128], vf=[128, 128])),
    )
    model.set_logger(configure(str(out), ["csv"]))
    t0 = time.time()
    model.learn(args.timesteps, callback=CallbackList([TqdmCallback(args.timesteps), SuccessRateCallback()]))
    train_s = time.time() - t0
    model.save(out / "ppo_tokens")
    vec.close()

    eval_env = VecMonitor(make_token_vec_env(args.task, min(args.n_envs, args.eval_episodes), folder,
                                             seed=DEFAULT_SEED_START, vec_env_cls="dummy", device=args.device,
                                             **env_kwargs))
    successes: list[bool] = []

    def on_step(locals_, globals_):  # evaluate_policy calls this after every env step
        if locals_["done"]:
            successes.append(bool(locals_["info"].get("success", False)))

    mean_r, std_r = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True,
                                    callback=on_step)
    eval_env.close()
    metrics = {
        "checkpoint": str(folder), "task": args.task, "timesteps": model.num_timesteps, "n_envs": args.n_envs,
        "train_seconds": round(train_s, 1), "steps_per_second": round(model.num_timesteps / train_s, 1),
        "eval_episodes": len(successes), "eval_mean_reward": float(mean_r), "eval_std_reward": float(std_r),
        "eval_success_rate": float(np.mean(successes)) if successes else 0.0,
    }
    if args.video:
        metrics["video"] = str(record_video(model, args.task, folder, cfg, env_kwargs, out, DEFAULT_SEED_START))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
