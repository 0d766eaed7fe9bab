#!/usr/bin/env bash
# Check the lmms-eval plug-in against the real lmms-eval, in a virtual environment of its own:
#   bash scripts/check_lmms_eval.sh              # from anywhere; ~5 min on 2 CPU cores, plus the suite
#
# 1. Installs the CPU torch (TORCH_SPEC, default torch==2.13.0), then `pip install -e ".[lmms]"` with a constraint
#    that keeps that torch, and checks the result: same torch, no nvidia-* packages, torchvision absent or
#    importable (PyPI's is a CUDA build that cannot load next to a CPU torch: it is removed), pip check clean but
#    for that, and the released LLaMA tokenizer.model's proto loads under lmms-eval's protobuf.
# 2. Runs the 3-question task scripts/lmms_task (assets/sample.mp4) through the lmms-eval CLI for a tiny model of
#    each family: one process without and with --apply_chat_template, and 2 processes (torchrun on CPU, gloo),
#    all with --max_batch_size, and checks the results files (lmms-eval's CLI exits 0 even when it fails).
# 3. Runs the project's own suite in that environment (LMMS_CHECK_SUITE=0 skips it).
# Environment: LMMS_CHECK_DIR (work folder, kept; default a temporary one, removed after a pass), TORCH_SPEC,
# LMMS_CHECK_SUITE.
# Needs PyPI; nothing is downloaded at run time (HF_HUB_OFFLINE=1).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=${LMMS_CHECK_DIR:-}
if [ -z "$work" ]; then  # a temporary folder (a few GB): removed after a pass, kept with its logs after a failure
  work=$(mktemp -d -t lmms-check-XXXXXX)
  trap 'if [ $? -eq 0 ]; then rm -rf "$work"; else echo "logs and venv kept in $work" >&2; fi' EXIT
fi
mkdir -p "$work"
venv=$work/venv
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*"; }
die() { echo "check_lmms_eval: FAIL: $*" >&2; exit 1; }

# --------------------------------------------------------------------------------------------- install
step "virtual environment in $venv"
python3 -m venv "$venv"
py=$venv/bin/python
pip() { "$py" -m pip --disable-pip-version-check "$@"; }
pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
torch_version=$("$py" -c 'import torch; print(torch.__version__)')
echo "torch==$torch_version" > "$work/keep-torch.txt"
step "pip install -e .[lmms] keeping torch $torch_version"
pip install --quiet -c "$work/keep-torch.txt" -e ".[lmms]"

after=$("$py" -c 'import torch; print(torch.__version__)')
[ "$after" = "$torch_version" ] || die "torch changed from $torch_version to $after"
if pip list --format=freeze | grep -i '^nvidia-'; then die "the install pulled the nvidia-* packages above"; fi
drop_broken_torchvision() {  # after every install: lmms-eval requires torchvision, so pip puts it back
  if pip show --quiet torchvision 2>/dev/null && ! "$py" -c 'import torchvision' 2>/dev/null; then
    echo "$(pip list --format=freeze | grep -i '^torchvision==') cannot import next to torch $torch_version" \
         "(PyPI builds it for CUDA): removing it, as nothing on this path needs it"
    pip uninstall --quiet -y torchvision
  fi
}
drop_broken_torchvision
broken=$(pip check 2>&1 | grep -v -E 'requires torchvision(>=[0-9.]+)?, which is not installed' || true)
[ "$broken" = "No broken requirements found." ] || [ -z "$broken" ] || die "pip check: $broken"
"$py" - <<'PY' || die "sentencepiece's model proto does not load under this protobuf (see the lmms extra's pins)"
import google.protobuf
from sentencepiece import sentencepiece_model_pb2

sentencepiece_model_pb2.ModelProto()
print("sentencepiece model proto loads under protobuf", google.protobuf.__version__)
PY

# --------------------------------------------------------------------------------------------- lmms-eval runs
export HF_HOME=$work/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=1  # every run computes alike, so their greedy answers can be compared exactly
flags=(--include_path scripts/lmms_task --tasks flash_vstream_sample --log_samples --max_batch_size 2)
lmms_run() {  # NAME LAUNCHER... : one run into $work/out/NAME, its log beside it
  local name=$1; shift
  step "lmms-eval run $name"
  rm -rf "$work/out/$name"; mkdir -p "$work/out"
  "$@" --output_path "$work/out/$name" > "$work/out/$name.log" 2>&1 || die "$name exited $?; see $work/out/$name.log"
  if grep -q "Error during evaluation" "$work/out/$name.log"; then
    grep "Error during evaluation" "$work/out/$name.log" | head -1 >&2
    die "$name failed (lmms-eval still exited 0); see $work/out/$name.log"
  fi
}
for variant in star-vicuna flash-qwen2vl; do
  ckpt=$work/tiny-$variant
  "$venv/bin/flash-vstream" make-tiny --variant "$variant" --out "$ckpt" --force
  model=(--model flash_vstream --model_args "pretrained=$ckpt,device=cpu")
  lmms_run "$variant-1proc" "$venv/bin/lmms-eval" "${model[@]}" "${flags[@]}"
  lmms_run "$variant-1proc-chat" "$venv/bin/lmms-eval" "${model[@]}" "${flags[@]}" --apply_chat_template
  # accelerate sees torchrun's CPU processes only with ACCELERATE_USE_CPU (`accelerate launch --cpu` sets it, but
  # its CLI imports timm, which needs the torchvision removed above).
  lmms_run "$variant-2proc-chat" env ACCELERATE_USE_CPU=1 "$venv/bin/torchrun" --standalone --nproc_per_node 2 \
    -m lmms_eval "${model[@]}" "${flags[@]}" --apply_chat_template
  "$py" scripts/lmms_task/check_results.py "$work/out/$variant-1proc" "$work/out/$variant-1proc-chat" \
    "$work/out/$variant-2proc-chat" || die "$variant results"
done

# --------------------------------------------------------------------------------------------- project suite
if [ "${LMMS_CHECK_SUITE:-1}" = "1" ]; then
  step "the project's suite in this environment"
  pip install --quiet -c "$work/keep-torch.txt" -e ".[lmms,dev]"
  drop_broken_torchvision
  # latex2sympy2 (an lmms-eval dependency) installs its own top-level `tests` package into site-packages, which
  # shadows this repository's tests/ (a namespace package); it is test data of that package, not code lmms-eval runs.
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ -f "$site/tests/__init__.py" ]; then
    echo "removing $site/tests (latex2sympy2's own tests, shadowing tests/)"
    rm -rf "$site/tests"
  fi
  "$py" -m pytest -q -x -p no:cacheprovider
fi
step "check_lmms_eval: ok (work folder $work)"
