#!/usr/bin/env bash
# Validates the deployment files with the real tools at pinned versions
# (scripts/install-deploy-tools.sh installs them into .tools/bin):
#
#   Dockerfile        hadolint, every finding fails (.hadolint.yaml)
#   helm/derper       helm lint --strict and helm template for every value set in
#                     helm/derper/ci/ (and the defaults); each rendered manifest decoded strictly
#                     (unknown or duplicate fields, wrong types, unknown kinds fail) against the
#                     Kubernetes API types of the pinned release and the CRDs' Go types, and
#                     validated against that release's OpenAPI v3 schemas, closed (required
#                     fields, types, unknown fields); PrometheusRule PromQL parsed by Prometheus's
#                     parser (tests/deploy/kubevalidate); typed assertions on the objects and every
#                     rendered relay config loaded by the real derper (kubevalidate's go test);
#                     bad values refused; the packaged chart carries the monitoring files
#   monitoring        every derp_* metric in the alert rules and dashboard is one the relay declares
#   terraform/        tofu fmt -check; derp-map: init (offline, no providers), validate, tofu test;
#                     its test fixture applied, and the maps it writes parsed by Tailscale's
#                     tailcfg.DERPMap (tests/go/derpmap), as Headscale parses derp.paths YAML
#
# DERPER_BIN (default target/debug/derper) is used to load the rendered configs; under CI=true it
# must exist. Prints PASS/FAIL per check and "N passed, N failed"; exits non-zero on a failure.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN="$REPO/.tools/bin"
KUBE_VERSION="v1.37.2"   # = k8s.io/api in tests/deploy/kubevalidate/go.mod
OPENAPI="$REPO/.tools/k8s-openapi/$KUBE_VERSION"   # scripts/install-deploy-tools.sh
CHART="$REPO/helm/derper"
DERPER_BIN="${DERPER_BIN:-$REPO/target/debug/derper}"
export TF_CLI_CONFIG_FILE=/dev/null TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1

for tool in helm tofu kubevalidate hadolint; do
    if [[ ! -x "$BIN/$tool" ]]; then
        echo "error: $BIN/$tool missing: run scripts/install-deploy-tools.sh" >&2
        exit 1
    fi
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
failures=()

# check NAME COMMAND...: runs the command with its output in a log, shown only on failure.
check() {
    local name="$1"
    shift
    local log="$WORK/log"
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        echo "PASS  $name"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "FAIL  $name"
        sed 's/^/      /' "$log" | tail -n 40
    fi
}

helm() { "$BIN/helm" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

# --- Dockerfile ------------------------------------------------------------------------------

dockerfile_shape() {
    # What the linter does not know we want: the three binaries, a non-root user, exec-form
    # entrypoint (no shell in the image to run a shell form).
    grep -q 'COPY --from=build /out/derper /out/stunner /out/loadtest' Dockerfile &&
        grep -q '^USER 65532:65532$' Dockerfile &&
        grep -q '^ENTRYPOINT \["/usr/local/bin/derper"\]$' Dockerfile &&
        grep -q '^target$' .dockerignore && grep -q '^\.tools$' .dockerignore
}
check "hadolint Dockerfile" "$BIN/hadolint" Dockerfile
check "Dockerfile: derper+stunner+loadtest, non-root, exec entrypoint, .dockerignore" dockerfile_shape

# --- Helm chart -------------------------------------------------------------------------------

value_sets=(defaults)
for f in "$CHART"/ci/*.yaml; do
    value_sets+=("$(basename "$f" .yaml)")
done
values_args() {
    [[ "$1" == defaults ]] || echo "-f $CHART/ci/$1.yaml"
}

for set in "${value_sets[@]}"; do
    # shellcheck disable=SC2046
    check "helm lint --strict ($set)" helm lint --strict --kube-version "$KUBE_VERSION" "$CHART" $(values_args "$set")
    render_and_validate() {
        # shellcheck disable=SC2046
        helm template derp "$CHART" --namespace derp --kube-version "$KUBE_VERSION" $(values_args "$1") \
            >"$WORK/render-$1.yaml" || return 1
        "$BIN/kubevalidate" -openapi "$OPENAPI" "$WORK/render-$1.yaml"
    }
    check "helm template + strict Kubernetes $KUBE_VERSION types + OpenAPI validation ($set)" render_and_validate "$set"
done

# The validator itself must fail what the API server would refuse (so a PASS above means something).
validator_rejects() {
    local bad out
    for bad in \
        'apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {externalTraficPolicy: Local}' \
        'apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: a}\nspec: {replicas: "3", selector: {}, template: {}}' \
        'apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{image: x}]}' \
        'apiVersion: v1\nkind: Servic\nmetadata: {name: a}' \
        'apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: a}\nspec: {endpoint: []}' \
        'apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: a}\nspec: {groups: [{name: g, rules: [{alert: A, expr: "up =="}]}]}' \
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, name: b}'; do
        if out="$(printf "$bad\n" | "$BIN/kubevalidate" -openapi "$OPENAPI" -)"; then
            printf 'accepted:\n%b\n%s\n' "$bad" "$out"
            return 1
        fi
        echo "$out" | grep FAIL
    done
}
check "kubevalidate refuses unknown/duplicate fields, wrong types, missing required fields, unknown kinds, bad PromQL" validator_rejects

# Values the chart must refuse, with the reason in the message.
refuses() {
    local want="$1"
    shift
    local out
    if out="$(helm template derp "$CHART" --kube-version "$KUBE_VERSION" "$@" 2>&1)"; then
        echo "rendered, but should have failed with: $want"
        return 1
    fi
    grep -qF -- "$want" <<<"$out" || { echo "failed without '$want':"; echo "$out"; return 1; }
}
check "chart refuses an unknown value key (schema)" refuses "additional properties 'replica' not allowed" --set replica=3
check "chart refuses a wrongly typed value (schema)" refuses "replicas" --set-string replicas=two
check "chart refuses an unknown TLS mode (schema)" refuses "/tls/mode" --set tls.mode=letsencrypt
check "chart refuses an ACME directory that is not https (schema)" refuses "/tls/acme/directory" --set tls.acme.directory=http://ca.example/dir
check "chart refuses more replicas than nodes" refuses "nodes has 2 entries but replicas is 3" --set replicas=3
check "chart refuses ACME with a mesh and no shared TLS name" refuses "mesh.peerTlsName" --set tls.mode=acme
check "chart refuses admission without a verify URL" refuses "admission.verifyClientUrl" --set admission.enabled=true

typed_chart_tests() {
    if [[ ! -x "$DERPER_BIN" ]]; then
        echo "DERPER_BIN=$DERPER_BIN is not built: rendered configs would not be loaded by derper"
        [[ "${CI:-}" == "true" ]] && return 1
        unset DERPER_BIN
    fi
    (cd tests/deploy/kubevalidate && HELM="$BIN/helm" CHART="$CHART" KUBE_VERSION="$KUBE_VERSION" \
        DERPER_BIN="${DERPER_BIN:-}" nice -n 10 go test -count=1 -v ./... 2>&1)
}
check "chart objects (typed assertions; configs loaded by derper --print-config)" typed_chart_tests

packaged_chart() {
    helm package "$CHART" --destination "$WORK/pkg" >/dev/null &&
        tar -xzf "$WORK"/pkg/derper-*.tgz -C "$WORK/pkg" &&
        cmp "$WORK/pkg/derper/files/alerts.yaml" deploy/monitoring/alerts.yaml &&
        cmp "$WORK/pkg/derper/files/dashboard.json" deploy/monitoring/dashboard.json
}
check "helm package carries deploy/monitoring/{alerts.yaml,dashboard.json}" packaged_chart

notes_print_derp_map() {
    # `helm install --dry-run` needs a cluster and `helm template` does not print NOTES, so a
    # copy of the chart renders NOTES.txt (with tpl, the chart's helpers in scope) into a
    # ConfigMap that `helm template` prints.
    local copy="$WORK/notes-chart"
    cp -rL "$CHART" "$copy" && cp "$CHART/templates/NOTES.txt" "$copy/files/NOTES.txt" &&
        cat >"$copy/templates/zz-notes.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: rendered-notes
data:
  notes.txt: {{ tpl (.Files.Get "files/NOTES.txt") . | quote }}
YAML
    helm template derp "$copy" --namespace derp --kube-version "$KUBE_VERSION" -f "$CHART/ci/three-replicas.yaml" \
        >"$WORK/notes.yaml" || return 1
    "$BIN/kubevalidate" -print-key notes.txt "$WORK/notes.yaml" 2>/dev/null >"$WORK/notes.txt" || return 1
    cat "$WORK/notes.txt"
    # The DERP map JSON in the notes parses and names every node.
    sed -n '/^{/,/^}/p' "$WORK/notes.txt" >"$WORK/notes-map.json"
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); sys.exit([n["Name"] for n in m["Regions"]["910"]["Nodes"]] != ["910a","910b","910c"])' \
        "$WORK/notes-map.json" &&
        grep -q 'derp-2.ams.example.com  ->  kubectl -n derp get svc derp-derper-2' "$WORK/notes.txt"
}
check "NOTES.txt prints the release's DERP map" notes_print_derp_map

# --- Monitoring -------------------------------------------------------------------------------

metric_names_declared() {
    local declared used missing=0
    declared="$(cat derper/src/metrics.rs derper/src/mesh/metrics.rs | grep -o '"derp_[a-z0-9_]*"' | tr -d '"' | sort -u)"
    used="$(grep -ho 'derp_[a-z0-9_]*[a-z0-9]' deploy/monitoring/alerts.yaml deploy/monitoring/dashboard.json |
        sed -E 's/_(bucket|sum|count)$//' | sort -u)"
    [[ -n "$used" ]] || { echo "no derp_* metrics found"; return 1; }
    for m in $used; do
        if ! grep -qx "$m" <<<"$declared"; then
            echo "not declared by the relay: $m"
            missing=1
        fi
    done
    return $missing
}
check "alert rules and dashboard use only metrics the relay declares" metric_names_declared
check "dashboard.json is JSON with panels" python3 -c 'import json,sys; sys.exit(len(json.load(open(sys.argv[1]))["panels"]) <= 8)' deploy/monitoring/dashboard.json

# --- Terraform / OpenTofu ---------------------------------------------------------------------

tofu() { "$BIN/tofu" "$@"; }
check "tofu fmt -check (terraform/)" tofu -chdir=terraform fmt -check -recursive -diff
tofu_validate_map() {
    TF_DATA_DIR="$WORK/tf-map" tofu -chdir=terraform/modules/derp-map init -backend=false -input=false -no-color &&
        TF_DATA_DIR="$WORK/tf-map" tofu -chdir=terraform/modules/derp-map validate -no-color
}
check "tofu init + validate (modules/derp-map, no providers)" tofu_validate_map
check "tofu test (modules/derp-map)" env TF_DATA_DIR="$WORK/tf-map" "$BIN/tofu" -chdir=terraform/modules/derp-map test -no-color

apply_fixture() {
    local dir=terraform/modules/derp-map/tests/fixture
    export TF_DATA_DIR="$WORK/tf-fixture"
    tofu -chdir="$dir" init -backend=false -input=false -no-color &&
        tofu -chdir="$dir" apply -auto-approve -input=false -no-color -state="$WORK/fixture.tfstate" &&
        tofu -chdir="$dir" output -state="$WORK/fixture.tfstate" -raw derp_map_json >"$WORK/fixture.json" &&
        tofu -chdir="$dir" output -state="$WORK/fixture.tfstate" -raw headscale_derp_yaml >"$WORK/fixture.yaml" &&
        tofu -chdir="$dir" output -state="$WORK/fixture.tfstate" -raw tailscale_policy_derp_map_json >"$WORK/policy.json"
}
check "tofu apply (derp-map test fixture) writes JSON, YAML and policy maps" apply_fixture

tailcfg_parses_maps() {
    local chart_maps=() set
    for set in "${value_sets[@]}"; do
        # The chart's own DERP map ConfigMap, as rendered for each value set.
        "$BIN/kubevalidate" -print-key derpmap.json "$WORK/render-$set.yaml" >"$WORK/chart-$set.json" 2>/dev/null || return 1
        [[ -s "$WORK/chart-$set.json" ]] || { echo "no derpmap ConfigMap in $set"; return 1; }
        chart_maps+=("$WORK/chart-$set.json")
    done
    local IFS=,
    (cd tests/go && DERPMAP_JSON="$WORK/fixture.json,${chart_maps[*]}" DERPMAP_POLICY="$WORK/policy.json" \
        DERPMAP_FIXTURE_JSON="$WORK/fixture.json" DERPMAP_FIXTURE_YAML="$WORK/fixture.yaml" \
        nice -n 10 go test -tags deploymaps -count=1 -v ./derpmap/ 2>&1)
}
check "Tailscale tailcfg.DERPMap parses the Terraform and chart maps (JSON strict, Headscale YAML)" tailcfg_parses_maps

echo
if ((${#failures[@]})); then
    echo "Failed:"
    printf '  - %s\n' "${failures[@]}"
fi
echo "${passed} passed, ${failed} failed"
[[ $failed -eq 0 ]]
