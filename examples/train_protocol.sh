#!/usr/bin/env bash
# The paper's protocol on PushCube, PickCube and StackCube: collect demos for each task, train one
# frame tokenizer and one video model on all three tasks' frames (actions dropped), fine-tune a
# single-task model per task with actions, and evaluate each with par-eval.
#
#   bash examples/train_protocol.sh                 # full scale: 1,000 demos per task, 128x128 (GPU)
#   SCALE=cpu bash examples/train_protocol.sh       # reduced scale: ~40 min of collection, ~2 h of training and ~30 min of evaluation on 2 CPU cores
#   TASKS="PickCube-v1 StackCube-v1" SCALE=cpu bash examples/train_protocol.sh   # fine-tune/evaluate some tasks
#   TOKENIZER_INIT=runs/pushcube-cpu64/tokenizer/final TOK_SET= SCALE=cpu bash ...  # warm-start the tokenizer
#   FG=0 ...                                        # tokenizer without foreground weighting (par-train --fg-weight)
#   NUM_DEMOS=1000 TASKS=PickCube-v1 SUFFIX=_1000demos SCALE=cpu bash ...  # more demos for the fine-tuned tasks,
#                                                   # report as results/pickcube_cpu_1000demos.json
#   EPISODES=250 ...                                # evaluation episodes for every task (default: the EPS table below)
#
# Every step resumes: par-collect tops a dataset up to --num-demos, par-train continues from the
# stage's latest checkpoint, and a finished stage (its final/ folder exists) is skipped.
# Console scripts come from the venv: `source .venv/bin/activate` first (make setup creates it).
# Several GPUs: prefix the par-train lines with `torchrun --nproc_per_node N -m par_agent.train`.
set -euo pipefail -f  # -f: no globbing (TOK_SET holds brackets)
SCALE=${SCALE:-full}
ALL_TASKS="PushCube-v1 PickCube-v1 StackCube-v1"
TASKS=${TASKS:-$ALL_TASKS}
# any of these can be set from the environment (e.g. TOK=400 with TOKENIZER_INIT)
if [ "$SCALE" = cpu ]; then
  : "${CAM:=64}" "${PRESET:=cpu64}" "${BS:=16}" "${TOK:=1000}" "${TOK_LR:=2e-3}"
  # 4,500 fine-tuning steps of 16 (about 29 passes over PickCube's 2,498 windows): at 1,500 PickCube grasped the
  # cube in 16% of episodes, at 4,500 in 62% (docs/RESULTS.md)
  : "${PRE:=800}" "${FT:=4500}" "${FT_LR:=6e-4}"
  # 64x64 frames: a stride-4 autoencoder with 4x4 latent patches (still 16 tokens per frame), so
  # the 2-3 pixel cubes survive tokenization (cube PSNR, bench_world_model.py; docs/RESULTS.md)
  : "${TOK_SET=vae_stride=4 vae_channels=[16,32,64] patch_size=4}"
  declare -A DEMOS=([PushCube-v1]=150 [PickCube-v1]=250 [StackCube-v1]=120)
  # a failed StackCube episode runs all 400 steps (about 40 s here): 20 episodes, not 50
  declare -A EPS=([PushCube-v1]=50 [PickCube-v1]=50 [StackCube-v1]=20)
else
  : "${CAM:=128}" "${PRESET:=small}" "${BS:=64}" "${TOK:=20000}" "${TOK_LR:=1e-3}"
  : "${PRE:=30000}" "${FT:=60000}" "${FT_LR:=3e-4}" "${TOK_SET=}"
  declare -A DEMOS=([PushCube-v1]=1000 [PickCube-v1]=1000 [StackCube-v1]=1000)
  declare -A EPS=([PushCube-v1]=250 [PickCube-v1]=250 [StackCube-v1]=250)
fi
DATA=${DATA:-data/protocol-$SCALE}
RUN=${RUN:-runs/protocol-$SCALE}
RESULTS=${RESULTS:-results}
mkdir -p "$RESULTS"

done_stage() { [ -f "$1/final/model.safetensors" ]; }

# demos: NUM_DEMOS (if set) for the tasks to fine-tune; the table's number for the other tasks,
# which are only needed (and collected) while the shared tokenizer / video model are not trained
for t in $ALL_TASKS; do
  n=${DEMOS[$t]}
  if [[ " $TASKS " == *" $t "* ]]; then
    n=${NUM_DEMOS:-$n}
  elif done_stage "$RUN/video/pretrain-video"; then
    continue
  fi
  par-collect --task "$t" --num-demos "$n" --out "$DATA" --camera-size "$CAM" --workers 2 --no-progress
done
ALL_DATA=$(for t in $ALL_TASKS; do echo "$DATA/$t"; done)

# 1. frame tokenizer on all tasks' frames
if ! done_stage "$RUN/video/tokenizer"; then
  par-train tokenizer --data $ALL_DATA --out "$RUN/video" --preset "$PRESET" --steps "$TOK" --batch-size 4 \
    --lr "$TOK_LR" --fg-weight "${FG:-20}" --ckpt-every 200 --val-every 500 \
    ${TOKENIZER_INIT:+--init "$TOKENIZER_INIT"} ${TOK_SET:+--set $TOK_SET}
fi
# 2. video pretraining: frames of all three tasks, no actions, no state
if ! done_stage "$RUN/video/pretrain-video"; then
  par-train pretrain-video --data $ALL_DATA --out "$RUN/video" --steps "$PRE" --batch-size "$BS" \
    --ckpt-every 200 --val-every 400
fi
# 3. per task: action fine-tuning from the video model (single-task model, the task's state size), evaluation
for t in $TASKS; do
  name=$(echo "${t%-v1}" | tr '[:upper:]' '[:lower:]')
  if ! done_stage "$RUN/$name/finetune"; then
    par-train finetune --data "$DATA/$t" --out "$RUN/$name" --init "$RUN/video/pretrain-video/final" \
      --steps "$FT" --batch-size "$BS" --lr "$FT_LR" --warmup 100 --ema 0.999 --ckpt-every 250 --val-every 750
  fi
  par-eval --policy "$RUN/$name/finetune/final" --task "$t" --episodes "${EPISODES:-${EPS[$t]}}" --num-envs 2 --videos 2 \
    --video-dir "$RUN/$name/videos" --out "$RESULTS/${name}_$SCALE${SUFFIX:-}.json"
done
