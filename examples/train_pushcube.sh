#!/usr/bin/env bash
# Collect PushCube demos, train PAR (tokenizer -> video pretraining -> action fine-tuning), evaluate.
#   bash examples/train_pushcube.sh                # full scale: 1,000 demos, 128x128 (a GPU is recommended)
#   SCALE=small bash examples/train_pushcube.sh    # the same pipeline in ~15 minutes on a 2-core CPU
# Console scripts come from the venv: `source .venv/bin/activate` first (make setup creates it).
set -euo pipefail
SCALE=${SCALE:-full}
if [ "$SCALE" = small ]; then
  DEMOS=10; CAM=64; PRESET=cpu64; TOK=100; PRE=50; FT=150; BS=8; EPISODES=4
else
  DEMOS=1000; CAM=128; PRESET=small; TOK=20000; PRE=30000; FT=60000; BS=64; EPISODES=250
fi
DATA=${DATA:-data/pushcube-$SCALE}
RUN=${RUN:-runs/pushcube-$SCALE}
par-collect --task PushCube-v1 --num-demos "$DEMOS" --out "$DATA" --camera-size "$CAM" --workers 2
par-train tokenizer      --data "$DATA/PushCube-v1" --out "$RUN" --preset "$PRESET" --steps "$TOK" --batch-size 4
par-train pretrain-video --data "$DATA/PushCube-v1" --out "$RUN" --steps "$PRE" --batch-size "$BS"
par-train finetune       --data "$DATA/PushCube-v1" --out "$RUN" --steps "$FT" --batch-size "$BS"
par-eval --policy "$RUN/finetune/final" --task PushCube-v1 --episodes "$EPISODES" --num-envs 2 --videos 2 \
  --video-dir "$RUN/videos" --out "$RUN/eval.json"
python examples/sb3_evaluate.py --checkpoint "$RUN/finetune/final" --n-envs 2 --episodes "$EPISODES"
