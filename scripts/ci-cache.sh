#!/usr/bin/env bash
# Keeps what CI compiled and installed in a folder outside the clone, so a
# later run on the same machine rebuilds only what changed (the convention
# of rust-cache and sccache):
#
#   scripts/ci-cache.sh restore CACHE_DIR   at the start: ./target and
#                                           ./models become links into it
#   scripts/ci-cache.sh built CACHE_DIR     once everything is compiled
#
# ./target holds cargo's builds and the Python and npm environments
# (target/bench-venv, target/clients); ./models the models `rag models
# fetch` checks and keeps.
#
# Cargo decides what to rebuild by comparing each source file's
# modification time with its last build, and a fresh clone dates every file
# now. So the cache keeps the sha256 of every tracked file of the last run
# (`sources.sha256`): a file whose content is unchanged gets an old date
# back, and only what changed is rebuilt. Files that changed in a run whose
# build did not finish (`pending`) keep the date of now until a build
# finishes, so a half-built or failed run never leaves an output that looks
# newer than its sources. A file that changed also re-dates its crate's
# `src/lib.rs` and `src/main.rs` (a new migration or page is read by a
# macro cargo does not track). Cargo does not notice a workspace that moved
# (`env!("CARGO_MANIFEST_DIR")` in a test binary would name the old
# folder), so when the clone is not where the last run was, the workspace's
# own crates are rebuilt and only the dependencies are reused.
#
# Nothing relies on the cache: a missing or unwritable folder means a cold
# build in the clone's own target/.
set -euo pipefail
trap 'echo "ci cache: failed at line $LINENO" >&2' ERR
cd "$(dirname "$0")/.."
mode=${1:-}
cache=${2:-}
if [ -z "$cache" ] || { [ "$mode" != restore ] && [ "$mode" != built ]; }; then
    echo "usage: $0 restore|built CACHE_DIR" >&2
    exit 2
fi
if [ ! -L target ] && [ "$mode" = built ]; then
    exit 0 # not using a cache
fi

if [ "$mode" = built ]; then
    : >"$cache/pending"
    exit 0
fi

if ! mkdir -p "$cache/target" 2>/dev/null || [ ! -w "$cache" ]; then
    echo "ci cache: $cache is not writable: a cold build in ./target" >&2
    exit 0
fi
cache=$(cd "$cache" && pwd)
for dir in target models; do
    if [ -e "$dir" ] && [ ! -L "$dir" ]; then
        echo "ci cache: ./$dir exists and is not a link: a cold build in it" >&2
        exit 0
    fi
done
# Models by the hash of what says which to fetch and how (a changed pin or
# export script fetches them again; `rag models fetch` only checks that the
# files are there).
models=models-$({ cat api/src/ops/models.rs scripts/bench/embed_peer.py 2>/dev/null || true; } | sha256sum | cut -c1-16)
mkdir -p "$cache/$models"
find "$cache" -maxdepth 1 -name 'models-*' ! -name "$models" -exec rm -rf {} +
ln -sfn "$cache/target" target
ln -sfn "$cache/$models" models

manifest=$cache/sources.sha256
touch "$cache/pending"
state=cold
if [ -s "$manifest" ] && [ -d "$cache/target/release" ]; then
    state=warm
    last=$(cat "$cache/clone" 2>/dev/null || echo '?')
    if [ "$last" != "$PWD" ]; then
        state="warm for dependencies only (the last run was in $last)"
        crates=$(cargo metadata --no-deps --format-version 1 --offline |
            python3 -c 'import json,sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))') || crates=
        for profile in release fast; do
            [ -d "target/$profile" ] || continue
            # shellcheck disable=SC2086
            if [ -z "$crates" ] || ! cargo clean --profile "$profile" $crates -q; then
                echo "ci cache: could not clean the workspace's crates: $profile rebuilt whole" >&2
                rm -rf "target/$profile"
            fi
        done
        # Virtual environments name their folder in their scripts.
        rm -rf target/*-venv target/clients
    fi
fi
echo "$PWD" >"$cache/clone"

git ls-files -z | xargs -0 sha256sum >"$cache/sources.new"
# sha256sum escapes a name with a backslash or a newline (a leading `\`);
# the paths below could not be read back, so such a tree is not dated.
if grep -q '^\\' "$cache/sources.new"; then
    echo "ci cache: a tracked file name has a backslash or newline: nothing dated back" >&2
    rm -f "$manifest"
fi
if [ -s "$manifest" ]; then
    # Changed: not in the last manifest as they are now, or pending.
    grep -vFxf "$manifest" "$cache/sources.new" | cut -c67- >>"$cache/pending" || true
    sort -u -o "$cache/pending" "$cache/pending"
    old=200101010000
    git ls-files -z | xargs -0 touch -h -t "$old"
    {
        cat "$cache/pending"
        # Their crates' roots.
        cut -d/ -f1 "$cache/pending" | sort -u | while IFS= read -r top; do
            for root in "$top/src/lib.rs" "$top/src/main.rs"; do
                if [ -f "$root" ]; then echo "$root"; fi
            done
        done
    } | while IFS= read -r path; do
        if [ -e "$path" ]; then touch -h "$path"; fi
    done
    changed=$(grep -c . "$cache/pending" || true)
    echo "ci cache: $cache, $state; $changed files changed since the last finished build" >&2
else
    git ls-files >"$cache/pending"
    echo "ci cache: $cache, $state" >&2
fi
mv "$cache/sources.new" "$manifest"
