#!/usr/bin/env bash
# Collect PushCube demos, train PAR (tokenizer -> video pretraining -> action fine-tuning), evaluate.
#   bash examples/train_pushcube.sh                # full scale (GPU recommended)
#   SCALE=small bash examples/train_pushcube.sh    # minutes on a laptop CPU, same pipeline
set -euo pipefail
SCALE=${SCALE:-full}
DATA=${DATA:-data/PushCube-v1}
RUN=${RUN:-runs/pushcube-$SCALE}
if [ "$SCALE" = small ]; then
  DEMOS=20; TOK=300; PRE=200; FT=400; EPISODES=10; BS=8; SET="--set depth=4 width=192"
else
  DEMOS=1000; TOK=20000; PRE=30000; FT=60000; EPISODES=250; BS=64; SET=""
fi
par-collect --task PushCube-v1 --num-demos "$DEMOS" --out "$DATA" --workers 2
par-train tokenizer      --data "$DATA" --out "$RUN" --steps "$TOK" --batch-size "$BS" $SET
par-train pretrain-video --data "$DATA" --out "$RUN" --steps "$PRE" --batch-size "$BS"
par-train finetune       --data "$DATA" --out "$RUN" --steps "$FT"  --batch-size "$BS"
par-eval --policy "$RUN/finetune/final" --task PushCube-v1 --episodes "$EPISODES" --num-envs 2 --videos 2 \
  --out "$RUN/eval.json"
