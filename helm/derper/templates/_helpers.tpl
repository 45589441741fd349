{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "derper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; pods are <fullname>-<ordinal>, so keep room for the suffix. */}}
{{- define "derper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "derper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "derper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "derper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "derper.labels" -}}
helm.sh/chart: {{ include "derper.chart" . }}
{{ include "derper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: derp-fleet
{{- end }}

{{- define "derper.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "derper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "derper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the mesh key (key `key`). */}}
{{- define "derper.meshSecretName" -}}
{{- default (printf "%s-mesh-key" (include "derper.fullname" .)) .Values.mesh.existingSecret }}
{{- end }}

{{/* Name of the kubernetes.io/tls Secret mounted in certManager and secret modes. */}}
{{- define "derper.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" }}
{{- required "tls.secret.name is required with tls.mode=secret" .Values.tls.secret.name }}
{{- else }}
{{- printf "%s-tls" (include "derper.fullname" .) }}
{{- end }}
{{- end }}

{{/* The headless Service that names every ready relay (DNS mesh membership). */}}
{{- define "derper.headlessName" -}}
{{- printf "%s-mesh" (include "derper.fullname" .) }}
{{- end }}

{{/* Mesh peers verify this name on each other's certificate. */}}
{{- define "derper.meshTlsName" -}}
{{- default (index .Values.nodes 0).hostname .Values.mesh.peerTlsName }}
{{- end }}

{{/* Fails rendering when the values contradict each other (the schema checks each key alone). */}}
{{- define "derper.validate" -}}
{{- if lt (len .Values.nodes) (int .Values.replicas) }}
{{- fail (printf "nodes has %d entries but replicas is %d: every replica needs nodes[i].hostname" (len .Values.nodes) (int .Values.replicas)) }}
{{- end }}
{{- if and (eq .Values.tls.mode "acme") .Values.mesh.enabled (gt (int .Values.replicas) 1) (not .Values.mesh.peerTlsName) }}
{{- fail "tls.mode=acme gives each pod a certificate for its own name only, so mesh links cannot verify one shared name: set mesh.peerTlsName to a name on every pod's certificate, or use tls.mode=certManager/secret" }}
{{- end }}
{{- if and .Values.admission.enabled (not .Values.admission.verifyClientUrl) }}
{{- fail "admission.enabled needs admission.verifyClientUrl" }}
{{- end }}
{{- if and (eq .Values.networking.mode "hostNetwork") (not .Values.networking.hostNetwork.bindPrivilegedPorts) (include "derper.privilegedPorts" .) }}
{{- fail "networking.hostNetwork.bindPrivilegedPorts=false needs networking.ports.https >= 1024 and .http -1 or >= 1024" }}
{{- end }}
{{- end }}

{{/* DERP map node name of replica $i: <region id><letter>, like Tailscale's "1a", "1b". */}}
{{- define "derper.nodeName" -}}
{{- $letters := "abcdefghijklmnopqrstuvwxyz" }}
{{- if lt .i 26 }}
{{- printf "%d%s" (int .root.Values.region.id) (substr .i (add1 .i | int) $letters) }}
{{- else }}
{{- printf "%d-%d" (int .root.Values.region.id) .i }}
{{- end }}
{{- end }}

{{/* This release's DERP map (tailcfg.DERPMap JSON): one region, one node per replica. */}}
{{- define "derper.derpMap" -}}
{{- $nodes := list }}
{{- range $i := until (int .Values.replicas) }}
{{- $n := index $.Values.nodes $i }}
{{- $node := dict "Name" (include "derper.nodeName" (dict "root" $ "i" $i)) "RegionID" (int $.Values.region.id) "HostName" $n.hostname }}
{{- if $n.ipv4 }}{{ $_ := set $node "IPv4" $n.ipv4 }}{{ end }}
{{- if $n.ipv6 }}{{ $_ := set $node "IPv6" $n.ipv6 }}{{ end }}
{{- if ne (int $.Values.networking.ports.stun) 3478 }}{{ $_ := set $node "STUNPort" (int $.Values.networking.ports.stun) }}{{ end }}
{{- if ne (int $.Values.networking.ports.https) 443 }}{{ $_ := set $node "DERPPort" (int $.Values.networking.ports.https) }}{{ end }}
{{- $nodes = append $nodes $node }}
{{- end }}
{{- $region := dict "RegionID" (int .Values.region.id) "RegionCode" .Values.region.code "RegionName" .Values.region.name "Nodes" $nodes }}
{{- dict "Regions" (dict (toString (int .Values.region.id)) $region) | toPrettyJson }}
{{- end }}

{{/* Non-empty when a listening TCP port is below 1024. */}}
{{- define "derper.privilegedPorts" -}}
{{- $p := .Values.networking.ports }}
{{- if or (lt (int $p.https) 1024) (and (ge (int $p.http) 0) (lt (int $p.http) 1024)) }}true{{ end }}
{{- end }}
