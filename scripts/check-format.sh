#!/bin/bash
# Checks that every C and C++ file in the tree is as clang-format (the root's
# .clang-format) would write it; lists the files that are not and exits 1.
#
#   ./scripts/check-format.sh [--fix]
#
# --fix rewrites them in place instead. scripts/test.sh runs the check first
# (job `format`), so that .ci/run refuses an unformatted change.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$RPCGATE_ROOT"
command -v clang-format >/dev/null || die "clang-format is not installed (scripts/setup.sh installs it)"
mapfile -t files < <(git ls-files '*.c' '*.cc' '*.h')
if [ "${1:-}" = --fix ]; then
    clang-format -i "${files[@]}"
    exit 0
fi
bad=()
for f in "${files[@]}"; do
    clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
    say "${#bad[@]} of ${#files[@]} files are not clang-formatted (./scripts/check-format.sh --fix):"
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
fi
say "all ${#files[@]} C/C++ files are clang-formatted"
