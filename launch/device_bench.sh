#!/usr/bin/env bash
# Issue 7's GPU measurements as one prepared run that fits a short device lease (~9 minutes on one H100/H200).
#
#   bash launch/device_bench.sh wheels   # here, with PyPI: the packages the device image lacks, into .whl/
#   bash launch/device_bench.sh run      # there: GPU tests, then the benchmark shapes, most important first
#   SMOKE=1 bash launch/device_bench.sh run   # the same plumbing on CPU with the tiny shape (no wheels)
#
# `run` writes at most four files to $OUT (default ./device-out): log.txt (everything), tables.md (one
# markdown table per command, with the command), results.json (all rows) and gpu_tests.txt. Each command has
# its own time cap, so one that hangs or runs out of memory costs its cap, not the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}

wheels() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    local plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    # versions as installed here, so the device runs what CI tested
    v() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    "$PY" -m pip wheel -q --no-deps -w .whl "deepspeed==$(v deepspeed)"
    "$PY" -m pip download -q --no-deps -d .whl "${plat[@]}" \
        "transformers==$(v transformers)" "peft==$(v peft)" "pydantic==$(v pydantic)" \
        "pydantic-core==$(v pydantic-core)" "annotated-types==$(v annotated-types)" \
        "typing-inspection==$(v typing-inspection)" "hjson==$(v hjson)" "datasets==$(v datasets)" \
        "dill==$(v dill)" "multiprocess==$(v multiprocess)" "liger-kernel" \
        "lm-eval==$(v lm-eval)" "evaluate==$(v evaluate)" "more-itertools==$(v more-itertools)" \
        "pytablewriter==$(v pytablewriter)" "word2number==$(v word2number)" \
        "huggingface-hub==$(v huggingface-hub)" "tokenizers==$(v tokenizers)"
    du -sh .whl
}

run() {
    local out=${OUT:-device-out}
    mkdir -p "$out"
    : >"$out/log.txt"
    : >"$out/tables.md"
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    if [ -z "${SMOKE:-}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl >>"$out/log.txt" 2>&1 || { echo "wheel install failed" | tee -a "$out/log.txt"; return 1; }
        export PYTHONPATH=/tmp/site
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$out/log.txt"
        timeout 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/train/test_gpu.py >"$out/gpu_tests.txt" 2>&1
        tail -5 "$out/gpu_tests.txt"
    fi
    local shape=llama3_2_1b big=llama3_1_8b seq=4096 long=8192 mb=8 steps=(--steps 10 --warmup 3) cap=150
    [ -n "${SMOKE:-}" ] && shape=llama3_tiny big=llama3_tiny seq=256 long=512 mb=2 steps=(--steps 2 --warmup 1)
    local fast=(--liger --fused-adam --loss-chunk 4096) offload=(--liger --loss-chunk 4096) best=(--peer-liger)
    local flex=(--attn flex_attention)
    [ -n "${SMOKE:-}" ] && fast=(--loss-chunk 64) offload=(--loss-chunk 64) best=() flex=()  # no CPU backward
    local n=0
    bench() {  # bench CAP ARGS...: one launch/bench.py train invocation, its table appended to tables.md
        local limit=$1
        shift
        n=$((n + 1))
        printf '\n### %s\n\n`python launch/bench.py train %s`\n\n' "$n" "$*" >>"$out/tables.md"
        timeout "$limit" "$PY" launch/bench.py train "$@" --json "$out/part$n.json" >>"$out/log.txt" 2>&1 ||
            echo "(exit $?: see log.txt)" >>"$out/tables.md"
        "$PY" - "$out/part$n.json" >>"$out/tables.md" 2>/dev/null <<'EOF'
import json, sys
from train.benchmark import markdown
print(markdown(json.load(open(sys.argv[1]))))
EOF
        tail -n 4 "$out/tables.md"
    }
    # 1. Llama-3.2-1B full rows at 4096: ours with its switches against the peer with its best flags (Liger)
    bench $cap --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data full \
        --peer hf "${best[@]}" "${fast[@]}"
    # 2. real-shaped SFT: non-pad tokens/s against the padded and the flattening peer
    bench $cap --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data sft \
        --peer hf hf_flat "${best[@]}" "${fast[@]}"
    # 3. document-masked packed CPT (flex attention's block mask) against full rows, same settings
    bench $cap --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data cpt \
        "${flex[@]}" "${fast[@]}"
    bench $cap --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data cpt "${fast[@]}"
    # 4. seq 8192
    bench $cap --shape $shape --seq $long --zero 2 --micro-batch $((mb / 2)) "${steps[@]}" --data full \
        --peer hf "${best[@]}" "${fast[@]}"
    # 5. Llama-3.1-8B: full tuning against Concat16-Lerp at the same settings (cost_vs_full), ZeRO-3 with the
    # optimizer on the CPU (full tuning's Adam state does not fit one GPU)
    bench 240 --shape $big --seq $seq --zero 3 --offload-optimizer --micro-batch 1 --steps 3 --warmup 1 \
        --activation-checkpointing selective --expansion none concat16 "${offload[@]}"
    "$PY" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = sorted(out.glob("part*.json"), key=lambda p: int(p.stem[4:]))
rows = [dict(r, command=int(p.stem[4:])) for p in parts for r in json.loads(p.read_text())]
(out / "results.json").write_text(json.dumps(rows, indent=1))
for p in parts:
    p.unlink()
EOF
}

case "${1:-}" in
wheels) wheels ;;
run) run ;;
*)
    echo "usage: bash launch/device_bench.sh {wheels|run}" >&2
    exit 2
    ;;
esac
