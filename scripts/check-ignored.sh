#!/usr/bin/env bash
# Fails when a test is #[ignore]d without being on the allow-list,
# tests/ignored.txt (lines `BINARY TEST  # why`; BINARY is the test
# binary's name as cargo builds it: `cuda` for tests/tests/cuda.rs,
# `kiln_graph` for graph's unit tests). An ignored test does not run in
# `cargo test --workspace`, so each one must be there for a reason: a
# listed test that is no longer ignored fails the check too, so the list
# stays true. CI runs this before the tests.
#
#   scripts/check-ignored.sh
set -euo pipefail
cd "$(dirname "$0")/.."
allow=tests/ignored.txt
found=$(mktemp)
listed=$(mktemp)
trap 'rm -f "$found" "$listed"' EXIT
# `--list --ignored` prints each ignored test as `NAME: test`, after the
# `Running ... (target/debug/deps/BINARY-HASH)` line of its binary.
binary=""
while IFS= read -r line; do
    case "$line" in
    *" Running "*)
        binary=${line##*/}
        binary=${binary%)}
        binary=${binary%-*}
        ;;
    *"Doc-tests "*)
        binary="doc:${line##*Doc-tests }"
        ;;
    *": test")
        echo "$binary ${line%: test}" >>"$found"
        ;;
    esac
done < <(cargo test --workspace -- --list --ignored 2>&1)
sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$allow" | awk '{print $1, $2}' | sort -u >"$listed"
sort -u -o "$found" "$found"
status=0
unlisted=$(comm -23 "$found" "$listed")
if [ -n "$unlisted" ]; then
    echo "ignored tests not on $allow (an ignored test is a silent skip; say why there, or run it):"
    echo "$unlisted" | sed 's/^/  /'
    status=1
fi
stale=$(comm -13 "$found" "$listed")
if [ -n "$stale" ]; then
    echo "tests on $allow that are not ignored (any more): remove them from the list:"
    echo "$stale" | sed 's/^/  /'
    status=1
fi
if [ "$status" = 0 ]; then
    echo "ignored tests: $(wc -l <"$found"), all on $allow"
fi
exit "$status"
