#!/usr/bin/env bash
# Every GPU check and measurement in one run (about 7 minutes on one H200): `make gpu-check`.
#
#   1. the machine: GPU, driver, torch and transformers versions;
#   2. the GPU tests (pytest -m gpu): fp16 scaler, bf16, exact resume, DDP over NCCL, evaluation, probe;
#   3. benchmarks/gpu_step.py: a plain step, the run_mlm recipe and ours, seq 128/512, bf16/fp16 (+ --compile);
#   4. `simple` on a BERT-base-shaped model for 40 steps: the progress bar and metrics.jsonl on a GPU (tokens/s,
#      MFU, padding and data-wait shares of on-the-fly sentence pairs).
# Environment: TOKENIZER (a BERT tokenizer directory) and CORPUS (text in the corpus format); the Makefile sets
# both. Logs and figures go to OUT (default gpu-check-output/), scratch files to a temporary directory. Needs no
# network and no nltk. The data path is measured on the CPU alone: benchmarks/data_path.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-output}
PYTHON=${PYTHON:-python3}
: "${TOKENIZER:?set TOKENIZER to a BERT tokenizer directory}" "${CORPUS:?set CORPUS to a corpus file}"
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
started=$SECONDS
section() { echo; echo "=== $1 ($((SECONDS - started)) s)"; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$OUT/machine.txt"
$PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/machine.txt"

section "GPU tests"
$PYTHON -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$OUT/gpu_tests.txt" | tail -n 25

section "the training step: plain, run_mlm, ours"
$PYTHON benchmarks/gpu_step.py --tokenizer "$TOKENIZER" --corpus "$CORPUS" --json "$OUT/gpu_step.json" --compile_after_s 240 \
    2> "$OUT/gpu_step.log" | tee "$OUT/gpu_step.txt"
tail -n 3 "$OUT/gpu_step.log"

section "simple on the GPU: progress bar and metrics"
model="$work/random_bert_base"
$PYTHON - "$TOKENIZER" "$model" <<'EOF'
import sys
import torch
from transformers import AutoTokenizer, BertConfig, BertForPreTraining
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
torch.manual_seed(0)
BertForPreTraining(BertConfig(vocab_size=len(tokenizer))).save_pretrained(sys.argv[2])
tokenizer.save_pretrained(sys.argv[2])
EOF
$PYTHON -m bert_domain_ft simple --train_corpus "$CORPUS" --bert_model "$model" --output_dir "$work/simple_run" \
    --bf16 --max_steps 40 --train_batch_size 256 --logging_steps 10 --max_seq_len 128 2>&1 \
    | tr '\r' '\n' | grep -E "it/s|step/s|s/step|tok/s|error|Error" | tail -n 4
cp "$work/simple_run/metrics.jsonl" "$OUT/simple_metrics.jsonl"
$PYTHON - "$OUT/simple_metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    record = json.loads(line)
    if record.get("kind") == "train":
        print({key: round(value, 4) if isinstance(value, float) else value for key, value in record.items()
               if key in ("step", "mlm_loss", "sequences_per_second", "tokens_per_second", "mfu", "padding_share",
                          "data_wait_share")})
EOF

section "summary"
cat "$OUT/gpu_step.txt"
grep -E "passed|failed|error" "$OUT/gpu_tests.txt" | tail -n 1
echo "gpu-check: $((SECONDS - started)) s"
