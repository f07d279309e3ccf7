"""More object layouts for a locator than the demos show: demo scenes with the resting objects moved.

A demo set shows one layout per episode (248 StackCube episodes: 248 places per cube). A locator
trained on their frames learns those places. This module takes recorded demo steps (arm pose,
gripper, objects), moves every object that rests on the table to a new random place and yaw, sets
that state on a ManiSkill env and renders the camera, so that the frames keep the demos' arm poses
and occlusions while the objects cover the spawn area. The labels are ManiSkill's own
(``obs["extra"]["<object>_pose"]`` of the rendered state).

Rules, per recorded step: an object rests when its height is within 5 mm of its height at the
episode's start. Resting objects get a new xy, uniform over the box of all objects' starting xy
in the demos, and a uniform yaw, redrawn until they are as far apart as the demos' closest pair and
at least 6 cm from the gripper when it is below 10 cm. An object that does not rest (grasped,
lifted) keeps its place, unless it sits above a resting object (within 3 cm in xy): then it moves
with that object (a cube stacked on the other).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from tqdm import tqdm


def _quat_z(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)], dtype=np.float32)


def relay_objects(actors: dict[str, np.ndarray], start_z: dict[str, float], tcp: np.ndarray, box: np.ndarray,
                  min_gap: float, rng: np.random.Generator, tries: int = 100) -> dict[str, np.ndarray] | None:
    """New actor states for one step (see the module docstring), or None if no layout was found.

    Args:
        actors: ``{object: (13,) state}`` (position 3, quaternion 4 (w x y z), velocities 6).
        start_z: each object's height at the episode's start (m).
        tcp: the gripper's position (3,).
        box: (2, 2) low and high corners of the xy area.
        min_gap: smallest xy distance between two resting objects (m).
    """
    resting = [o for o, s in actors.items() if abs(s[2] - start_z[o]) < 0.005]
    out = {o: s.copy() for o, s in actors.items()}
    for _ in range(tries):
        xy = {o: rng.uniform(box[0], box[1]) for o in resting}
        pts = list(xy.values())
        if any(np.linalg.norm(a - b) < min_gap for i, a in enumerate(pts) for b in pts[i + 1:]):
            continue
        if tcp[2] < 0.10 and any(np.linalg.norm(p - tcp[:2]) < 0.06 for p in pts):
            continue
        break
    else:
        return None
    for o in resting:
        out[o][:2] = xy[o]
        out[o][3:7] = _quat_z(rng.uniform(-math.pi, math.pi))
        out[o][7:] = 0
    for o in actors:
        if o in resting:
            continue
        below = [r for r in resting if np.linalg.norm(actors[o][:2] - actors[r][:2]) < 0.03]
        if below:
            out[o][:2] = actors[o][:2] + (out[below[0]][:2] - actors[below[0]][:2])
    return out


def relaid_frames(env, episodes: Sequence[dict], objects: Sequence[str], num: int, camera: str = "base_camera",
                  seed: int = 0, progress: bool = True, actor_names: dict[str, str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``num`` demo steps with their resting objects moved.

    Args:
        env: the task's ManiSkill env, ``obs_mode="rgb+state_dict"``, with the demos' camera settings.
        episodes: each a dict with ``env_states`` (the demo's nested ``(T+1, ...)`` arrays) and
            ``state`` (T+1, Dp) the plain state the policy reads at each step.
        objects: the objects to move, by their observation name (``extra/<name>_pose``: ``cubeA``, ``obj``).
        num: frames to render; steps are drawn uniformly over all episodes' steps.
        actor_names: an object's actor name in ``env_states`` where it differs (PickCube: ``{"obj": "cube"}``).
    Returns:
        frames (num, H, W, 3) uint8, plain states (num, Dp) float32 and object poses (num, n, 7).
    """
    rng = np.random.default_rng(seed)
    actor = {o: (actor_names or {}).get(o, o) for o in objects}
    have = set(episodes[0]["env_states"]["actors"])
    missing = [a for a in actor.values() if a not in have]
    if missing:
        raise KeyError(f"no actor {missing} in the demos' env_states (they hold {sorted(have)}); "
                       "name it as OBJECT=ACTOR, e.g. obj=cube")
    starts = np.array([[ep["env_states"]["actors"][actor[o]][0, :2] for o in objects] for ep in episodes]).reshape(-1, 2)
    box = np.stack([starts.min(0), starts.max(0)])
    if len(objects) > 1:
        per = np.array([[ep["env_states"]["actors"][actor[o]][0, :2] for o in objects] for ep in episodes])
        min_gap = min(np.linalg.norm(per[:, i] - per[:, j], axis=-1).min()
                      for i in range(len(objects)) for j in range(i + 1, len(objects)))
    else:
        min_gap = 0.0
    lengths = np.array([len(ep["state"]) for ep in episodes])
    base = env.unwrapped
    frames, states, poses = [], [], []
    bar = tqdm(total=num, desc="relaid layouts", disable=not progress)
    while len(frames) < num:
        e = int(rng.choice(len(episodes), p=lengths / lengths.sum()))
        t = int(rng.integers(lengths[e]))
        ep = episodes[e]
        step = _index(ep["env_states"], t)
        actors = {o: step["actors"][actor[o]].copy() for o in objects}
        start_z = {o: float(ep["env_states"]["actors"][actor[o]][0, 2]) for o in objects}
        base.set_state_dict(_batched(step))
        tcp = np.asarray(base.agent.tcp.pose.p[0].cpu())
        moved = relay_objects(actors, start_z, tcp, box, min_gap, rng)
        if moved is None:
            continue
        step["actors"].update({actor[o]: v for o, v in moved.items()})
        base.set_state_dict(_batched(step))
        obs = base.get_obs()
        frames.append(np.asarray(obs["sensor_data"][camera]["rgb"][0].cpu()))
        states.append(ep["state"][t])
        poses.append(np.stack([np.asarray(obs["extra"][f"{o}_pose"][0].cpu()) for o in objects]))
        bar.update(1)
    bar.close()
    return np.stack(frames), np.stack(states).astype(np.float32), np.stack(poses).astype(np.float32)


def _index(tree, t: int):
    return {k: _index(v, t) for k, v in tree.items()} if isinstance(tree, dict) else np.array(tree[t])


def _batched(tree):
    return {k: _batched(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)[None]
