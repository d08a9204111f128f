#!/usr/bin/env bash
# Run the README's test command on a GPU machine the way a user would, and write a summary: card, versions,
# date, and how many tests ran on the GPU (passed / failed / skipped, with every skip reason).
#   scripts/test_gpu.sh [OUTDIR] [extra pytest args...]        (default OUTDIR: test-gpu-results/)
# Every GPU session starts by running it (on the device machine: scripts/test_gpu.sh "$OUT").
# The package need not be installed: tests/conftest.py imports it from this checkout's src/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-test-gpu-results}"; shift || true
mkdir -p "$out"
{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, '| triton', triton.__version__,
'| transformers', transformers.__version__, '| cuda visible:', torch.cuda.is_available())"
} > "$out/summary.txt" 2>&1
start=$(date +%s)
# The README's test command, plus a junit report to count from and the skip reasons (-rs).
PYTHONUNBUFFERED=1 python3 -m pytest -q tests -rsfE -p no:cacheprovider --junitxml="$out/junit.xml" "$@" \
  2>&1 | tee "$out/pytest.log"
rc=${PIPESTATUS[0]}
echo "wall: $(( $(date +%s) - start )) s, pytest exit code $rc" >> "$out/summary.txt"
python3 - "$out" >> "$out/summary.txt" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(f"{sys.argv[1]}/junit.xml").getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
n, f, e, s = (int(suite.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
print(f"tests: {n} collected, {n - f - e - s} passed, {f} failed, {e} errors, {s} skipped")
PY
grep -E "^(FAILED|ERROR|SKIPPED)" "$out/pytest.log" >> "$out/summary.txt"
tail -1 "$out/pytest.log" >> "$out/summary.txt"
cat "$out/summary.txt"
exit $rc
