#!/usr/bin/env bash
# Issue 7's GPU measurements as two prepared device calls that fit one short lease (15 minutes on one
# H100/H200, machine start included).
#
#   bash launch/device_bench.sh wheels   # here, with PyPI: the packages the device image lacks, into .whl/
#   bash launch/device_bench.sh run [STEP...]   # there: the steps below, in order (default: all)
#   SMOKE=1 bash launch/device_bench.sh run     # the same plumbing on CPU with the tiny shape (no wheels)
#
# Steps, most important first, with their caps: tests 150 s, full 75, sft 130, cpt 120, long 75, ratio 90,
# eval 150, 8b 150. First call: `run tests full sft cpt` (caps adding up to 475 s, leaving room for the installs
# and each cap's 15 s kill grace); at once after it, while the machine is warm (it goes back after 30 s idle):
# `run long ratio eval 8b` (465 s; what the lease's end cuts is the least important). `run` first checks that
# every import works, then writes at most four files to $OUT (default ./device-out): log.txt (everything),
# tables.md (one markdown table per command, with the command), results.json (all rows) and gpu_tests.txt.
# Each command has its own cap (SIGINT, so a benchmark still writes the rows it measured), so one that hangs or
# runs out of memory costs its cap, not the lease.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
STEPS=(tests full sft cpt long ratio eval 8b)

wheels() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    local plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    local pkg spec
    # what the device image lacks or has in another version; the versions installed here, which CI tested
    for pkg in deepspeed transformers peft pydantic pydantic-core annotated-types typing-inspection hjson \
        huggingface-hub httpx2 httpcore2 truststore tokenizers regex safetensors accelerate datasets dill \
        multiprocess liger-kernel lm-eval \
        evaluate more-itertools sqlitedict word2number rouge-score nltk defusedxml pytablewriter dataproperty \
        mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet; do
        spec=$pkg
        version=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null) &&
            spec="$pkg==$version"
        # a wheel for the device's Python 3.12, else one built here (sdist-only packages are pure Python)
        "$PY" -m pip download -q --no-deps -d .whl "${plat[@]}" "$spec" 2>/dev/null ||
            "$PY" -m pip wheel -q --no-deps -w .whl "$spec" || echo "no wheel for $spec"
    done
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
    fi
    # every import the steps reach, before any step spends its cap on a missing package
    "$PY" - >>"$out/log.txt" 2>&1 <<'EOF' || { echo "imports failed: see log.txt" | tee -a "$out/log.txt"; tail -5 "$out/log.txt"; return 1; }
import importlib.metadata as md
import deepspeed, peft, pydantic, transformers  # noqa: F401
import os
import train.benchmark, train.eval_benchmark, train.peer  # noqa: F401
from transformers import AutoModelForCausalLM, Trainer  # noqa: F401
if not os.environ.get("SMOKE"):  # every GPU step passes --liger; a failing import would cost each its cap
    import liger_kernel.transformers, triton  # noqa: F401
names = ("torch", "triton", "transformers", "deepspeed", "liger-kernel", "huggingface-hub", "regex", "pyarrow", "fsspec")
versions = {}
for n in names:
    try:
        versions[n] = md.version(n)
    except md.PackageNotFoundError:
        versions[n] = None
print(versions)
EOF
    # the eval step's own packages (datasets needs the image's pyarrow and fsspec): a failure skips that step only
    local eval_ok=1
    "$PY" -c "import datasets, lm_eval" >>"$out/log.txt" 2>&1 ||
        { eval_ok=; echo "eval imports failed: the eval step is skipped" | tee -a "$out/log.txt"; }
    local shape=llama3_2_1b big_shape=llama3_1_8b seq=4096 long=8192 mb=8 steps=(--steps 5 --warmup 2) questions=200
    local gen=128
    [ -n "${SMOKE:-}" ] && shape=llama3_tiny big_shape=llama3_tiny seq=256 long=512 mb=2 steps=(--steps 2 --warmup 1) \
        questions=8 gen=16
    local fast=(--liger --fused-adam --loss-chunk 4096) offload=(--liger --loss-chunk 4096) best=(--peer-liger)
    local flex=(--attn flex_attention)
    [ -n "${SMOKE:-}" ] && fast=(--loss-chunk 64) offload=(--loss-chunk 64) best=() flex=()  # no CPU backward
    # the flagship's 11.5B parameters with Adam state for its 3.49B trainable ones fit an H200 (141 GB), not an
    # H100: there ZeRO-3 with the optimizer on the CPU (DeepSpeed's CPU Adam, so no fused one)
    local big=(--zero 2 "${fast[@]}")
    if [ -z "${SMOKE:-}" ] && [ "$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)" -lt 100000 ]; then
        big=(--zero 3 --offload-optimizer "${offload[@]}")
    fi
    local n=0
    bench() {  # bench CAP MODE ARGS...: one launch/bench.py invocation, its table appended to tables.md
        local limit=$1 mode=$2
        shift 2
        n=$((n + 1))
        printf '\n### %s\n\n`python launch/bench.py %s %s`\n\n' "$n" "$mode" "$*" >>"$out/tables.md"
        timeout -s INT -k 15 "$limit" "$PY" launch/bench.py "$mode" "$@" --json "$out/part$n.json" >>"$out/log.txt" 2>&1 ||
            echo "(exit $?: see log.txt)" >>"$out/tables.md"
        "$PY" - "$out/part$n.json" "$mode" >>"$out/tables.md" 2>/dev/null <<'EOF'
import json, sys
from train import benchmark, eval_benchmark
columns = eval_benchmark.COLUMNS if sys.argv[2] == "eval" else benchmark.COLUMNS
print(benchmark.markdown(json.load(open(sys.argv[1])), columns))
EOF
        tail -n 4 "$out/tables.md"
    }
    local step
    for step in "${@:-${STEPS[@]}}"; do
        echo "== $step" | tee -a "$out/log.txt"
        case $step in
        tests)  # GPU-only code paths on the tiny shape
            [ -n "${SMOKE:-}" ] && continue
            timeout -s INT -k 15 150 "$PY" -m pytest -m gpu -q -rfE --timeout 60 --durations 10 -p no:cacheprovider \
                tests/train/test_gpu.py >"$out/gpu_tests.txt" 2>&1
            tail -3 "$out/gpu_tests.txt"
            ;;
        full)  # Llama-3.2-1B full rows at 4096: ours with its switches, the peer with its best flags (Liger)
            bench 75 train --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data full \
                --peer hf "${best[@]}" "${fast[@]}"
            ;;
        sft)  # alpaca-shaped SFT samples: non-pad tokens/s against the padded and the flattening peer; flex
            # attention on both sides (with sdpa the flattened row gets one dense (8 x 4096)^2 mask)
            bench 130 train --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data sft \
                --peer hf hf_flat "${best[@]}" "${fast[@]}" "${flex[@]}"
            ;;
        cpt)  # document-masked packed CPT, flex attention's block mask and sdpa's dense mask (compare with full)
            bench 60 train --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data cpt \
                "${flex[@]}" "${fast[@]}"
            bench 60 train --shape $shape --seq $seq --zero 2 --micro-batch $mb "${steps[@]}" --data cpt "${fast[@]}"
            ;;
        long)  # seq 8192
            bench 75 train --shape $shape --seq $long --zero 2 --micro-batch $((mb / 2)) "${steps[@]}" \
                --data full --peer hf "${best[@]}" "${fast[@]}"
            ;;
        eval)  # the in-training eval hook: questions/s (log-likelihood) and generated tokens/s
            [ -z "$eval_ok" ] && continue
            # random weights never emit EOS: every answer runs to --max-gen-tokens; batch 8 decodes the most steps
            for batch in 8 32; do
                bench $((batch == 8 ? 90 : 60)) eval --shape $shape --questions $((questions / 2)) \
                    --max-gen-tokens $gen --batch-size $batch
            done
            ;;
        8b)  # the flagship's shape: Llama-3.1-8B Concat16, lerp and dlerp (built on the GPU)
            bench 150 train --shape $big_shape --seq $seq "${big[@]}" --micro-batch 1 --steps 3 --warmup 1 \
                --activation-checkpointing selective --expansion concat16 concat16_dlerp
            ;;
        ratio)  # step cost of Concat against full tuning at the same settings, on the 1B shape (16 layers:
            # concat8 expands every second block, the pattern of Concat16 on 32); 8B full tuning does not fit
            bench 90 train --shape $shape --seq $seq --zero 2 --micro-batch 4 "${steps[@]}" \
                --activation-checkpointing selective --expansion none concat8 "${fast[@]}"
            ;;
        *) echo "unknown step '$step': choose from ${STEPS[*]}" | tee -a "$out/log.txt" ;;
        esac
    done
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
run)
    shift
    run "$@"
    ;;
*)
    echo "usage: bash launch/device_bench.sh {wheels|run}" >&2
    exit 2
    ;;
esac
