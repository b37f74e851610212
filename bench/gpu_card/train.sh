#!/bin/bash
# REPO=$PWD bash bench/gpu_card/train.sh NAME LAYERS HAND_REPEAT TUNE_REPEAT BUDGET_MIN [--set k=v ...]
# The model card's `radproto train` on the GPU (after setup.sh): the corpus in $CORPUS
# (default /tmp/corpus48)
# plus eval/tune.jsonl and eval/hand.jsonl repeated; the model directory comes back as
# $OUT/NAME.tar (without checkpoint/ and validation_report/; over ~16 MB, split it).
NAME=$1; LAYERS=$2; HR=$3; TR=$4; BUDGET=$5; shift 5
cd "$REPO"
export PYTHONPATH=$REPO:/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -f /tmp/$NAME.mix.jsonl
for i in $(seq $TR); do cat eval/tune.jsonl; done >> /tmp/$NAME.mix.jsonl
for i in $(seq $HR); do cat eval/hand.jsonl; done >> /tmp/$NAME.mix.jsonl
${PY:-python3} -m radproto train --preset default --data ${CORPUS:-/tmp/corpus48} --data /tmp/$NAME.mix.jsonl \
  --set quantization=none --set precision=bf16 --set optimizer=adamw \
  --set gradient_checkpointing=off --set max_steps=4000 --set time_budget_minutes=$BUDGET \
  --set tracking_uri= --set lexical=false --set calibration_data=eval/calib.jsonl \
  --set lora_layers=$LAYERS --set out_dir=/tmp/run_$NAME --set cache_dir=/tmp/cache_$NAME "$@" \
  > /tmp/$NAME.log 2>&1
echo "$NAME exit $?"
tar -cf $OUT/$NAME.tar --exclude=checkpoint --exclude=validation_report -C /tmp run_$NAME
tail -c 3000 /tmp/$NAME.log > $OUT/$NAME.log
