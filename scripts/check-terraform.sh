#!/usr/bin/env bash
# CI check for terraform/: terraform/tofu cannot run here (no providers can be
# downloaded), so parse every file with python-hcl2 and check structure with
# terraform/tests/check_hcl.py, then make sure the checker still catches the
# deliberately broken fixture terraform/tests/fixtures/bad/.
# Ends with "N passed, N failed[, N skipped]"; exits non-zero on any failure.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tf="$repo/terraform"
checker="$tf/tests/check_hcl.py"
bad="$tf/tests/fixtures/bad"
python="${PYTHON:-python3}"
passed=0 failed=0 skipped=0

ok()   { echo "ok:   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

# 1. python-hcl2 (a maintained HCL2 parser from PyPI)
if ! "$python" -c 'import hcl2' 2>/dev/null; then
  echo "installing python-hcl2 ..."
  if ! "$python" -m pip install --quiet --disable-pip-version-check 'python-hcl2>=4,<8'; then
    echo "FAIL: could not install python-hcl2 with pip" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
fi
echo "python-hcl2 $("$python" -c 'import importlib.metadata as m; print(m.version("python-hcl2"))')"

# 2. the real tree must have no problems
echo "--- check_hcl.py terraform/"
if "$python" "$checker" "$tf"; then
  ok "terraform/ passes the structure checks"
else
  fail "terraform/ has problems (see PROBLEM lines above)"
fi

# 3. self-test: the bad fixture must fail, with every expected problem code
echo "--- check_hcl.py terraform/tests/fixtures/bad (must report problems)"
out="$("$python" "$checker" "$bad")"
rc=$?
echo "$out" | tail -n 1
if [ "$rc" -ne 1 ]; then
  echo "$out"
  fail "checker exited $rc on the bad fixture (expected 1: problems found)"
else
  missing=""
  while read -r code; do
    case "$code" in ''|'#'*) continue ;; esac
    grep -q "^PROBLEM \[$code\] " <<<"$out" || missing="$missing $code"
  done <"$bad/expected-problems.txt"
  if [ -n "$missing" ]; then
    echo "$out"
    fail "checker did not report these expected problem kinds on the bad fixture:$missing"
  else
    ok "bad fixture is rejected with every expected problem kind"
  fi
fi

# 4. formatting, only where a terraform binary happens to be installed
#    (fmt needs no providers). Not available on a fresh CI machine.
if command -v terraform >/dev/null 2>&1; then
  echo "--- terraform fmt -check ($(terraform version 2>/dev/null | head -n 1))"
  fmt_bad=0
  for dir in "$tf/modules" "$tf/environments"; do
    terraform fmt -check -recursive -diff "$dir" 2>/dev/null || fmt_bad=1
  done
  if [ "$fmt_bad" -eq 0 ]; then
    ok "terraform fmt -check"
  else
    fail "terraform fmt -check: run 'terraform fmt -recursive terraform/modules terraform/environments'"
  fi
else
  echo "skip: terraform fmt -check (no terraform binary on this machine)"
  skipped=$((skipped + 1))
fi

echo "terraform-checks: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
