#!/usr/bin/env bash
# Run the README's test command on a GPU machine the way a user would, and write a summary: card, versions,
# date, and how many tests ran on the GPU (passed / failed / skipped, with every skip reason).
#   scripts/test_gpu.sh [OUTDIR] [pytest args...]     (default OUTDIR: test-gpu-results/)
# Extra args go to pytest; paths among them (tests/...) replace the default `tests`, so a session whose commands
# are capped (the device tool's 10 minutes) can run the suite in parts, e.g. tests/models, then tests/ops tests/scripts.
# Every GPU session starts by running it. The package need not be installed: tests/conftest.py imports src/.
# Each test's result is logged as it ends (-rA plus `-v` lines), so a run cut off by a time limit still counts.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-test-gpu-results}"; shift || true
mkdir -p "$out"
paths=(); for a in "$@"; do [[ "$a" == tests* ]] && paths+=("$a"); done
[ ${#paths[@]} -eq 0 ] && set -- tests "$@"
{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, '| triton', triton.__version__,
'| transformers', transformers.__version__, '| cuda visible:', torch.cuda.is_available())"
  echo "command: python3 -m pytest $*"
} > "$out/summary.txt" 2>&1
start=$(date +%s)
PYTHONUNBUFFERED=1 python3 -m pytest -v -rsfE -p no:cacheprovider --junitxml="$out/junit.xml" "$@" \
  > "$out/pytest.log" 2>&1
rc=$?
echo "wall: $(( $(date +%s) - start )) s, pytest exit code $rc" >> "$out/summary.txt"
# counts from the per-test lines (present even when the run was cut off before the junit report)
for s in PASSED FAILED ERROR SKIPPED; do
  echo "$s: $(grep -cE " $s( |$)" "$out/pytest.log")"
done >> "$out/summary.txt"
grep -E "^(FAILED|ERROR|SKIPPED) " "$out/pytest.log" >> "$out/summary.txt"
tail -1 "$out/pytest.log" >> "$out/summary.txt"
cat "$out/summary.txt"
exit $rc
