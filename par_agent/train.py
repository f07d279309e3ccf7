"""``par-train``: the three training stages of PAR, resumable and distributed.

    par-train tokenizer      --data data/PushCube-v1 --out runs/pushcube          # frame autoencoder
    par-train pretrain-video --data data/ --out runs/pushcube                      # frames only, no actions
    par-train finetune       --data data/PushCube-v1 --out runs/pushcube           # frames + actions

Each stage writes ``OUT/<stage>/``: ``ckpt-<step>/`` training checkpoints (written to a temporary
folder, then renamed; ``latest`` names the newest), ``metrics.csv``, TensorBoard events,
validation videos (real beside predicted next frames; the video stages only), and at the end ``final/``: the EMA weights as a PAR checkpoint folder that
``PARPolicy.from_pretrained`` loads. Re-running a stage resumes from ``latest``. A stage starts
from the previous stage's ``final/`` (``--init`` to choose another folder).

Several GPUs or nodes: ``torchrun --nproc_per_node 8 -m par_agent.train finetune ...`` (or
``accelerate launch -m par_agent.train ...``) runs DistributedDataParallel; on CPUs it uses gloo.
"""
from __future__ import annotations

from par_agent.training import parse_args, train


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv, doc=__doc__))


if __name__ == "__main__":
    main()
