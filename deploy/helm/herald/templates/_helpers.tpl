{{/* Names, labels, images and the parts every Herald pod shares. */}}

{{- define "herald.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The object name of a component: herald-<component>, or <fullnameOverride>-<component>. */}}
{{- define "herald.fullname" -}}
{{- $base := default "herald" .root.Values.fullnameOverride -}}
{{- printf "%s-%s" $base .component | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: herald-{{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{- define "herald.labels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: herald
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "herald.chart" .root }}
{{- end }}

{{/* "true" when a component runs in this release: its `enabled`, or else the role's default. */}}
{{- define "herald.enabled" -}}
{{- $values := index .root.Values .component -}}
{{- if kindIs "bool" $values.enabled -}}
{{- if $values.enabled }}true{{ end -}}
{{- else -}}
{{- $roles := dict "watcher" (list "single-cluster" "workload") "projector" (list "single-cluster" "hub") "api" (list "single-cluster" "hub") "catalog" (list) -}}
{{- if has .root.Values.role (index $roles .component) }}true{{ end -}}
{{- end -}}
{{- end }}

{{/* <registry>/<repository>/herald-<component>[:tag][@digest] */}}
{{- define "herald.image" -}}
{{- $image := .root.Values.image -}}
{{- $own := index .root.Values .component "image" | default dict -}}
{{- $repo := printf "%s/%s/herald-%s" $image.registry $image.repository .component -}}
{{- $tag := default .root.Chart.AppVersion $image.tag -}}
{{- $digest := default "" $own.digest -}}
{{- if $digest -}}
{{ $repo }}:{{ $tag }}@{{ $digest }}
{{- else -}}
{{ $repo }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/* The pod's security context; without fixed ids under `openshift: true` (the SCC assigns them). */}}
{{- define "herald.podSecurityContext" -}}
{{- $ctx := deepCopy .Values.podSecurityContext -}}
{{- if .Values.openshift -}}
{{- $_ := unset $ctx "runAsUser" -}}
{{- $_ := unset $ctx "runAsGroup" -}}
{{- $_ := unset $ctx "fsGroup" -}}
{{- end -}}
{{ toYaml $ctx }}
{{- end }}

{{/* The NATS connection: URL, credentials file or nkey seed mounted from a Secret, CA. */}}
{{- define "herald.natsEnv" -}}
- name: HERALD_NATS_URL
  value: {{ .root.Values.nats.url | quote }}
{{- with .auth }}
{{- if .secretName }}
- name: {{ if eq .type "nkey" }}HERALD_NATS_NKEY{{ else }}HERALD_NATS_CREDS{{ end }}
  value: /etc/herald/nats/{{ .key }}
{{- end }}
{{- end }}
{{- if .root.Values.nats.tls.caSecretName }}
- name: HERALD_NATS_TLS_CA
  value: /etc/herald/nats-ca/{{ .root.Values.nats.tls.caKey }}
{{- end }}
{{- end }}

{{- define "herald.natsVolumeMounts" -}}
{{- if .auth.secretName }}
- name: nats-credentials
  mountPath: /etc/herald/nats
  readOnly: true
{{- end }}
{{- if .root.Values.nats.tls.caSecretName }}
- name: nats-ca
  mountPath: /etc/herald/nats-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "herald.natsVolumes" -}}
{{- if .auth.secretName }}
- name: nats-credentials
  secret:
    secretName: {{ .auth.secretName }}
    defaultMode: 0440
    items:
      - key: {{ .auth.key }}
        path: {{ .auth.key }}
{{- end }}
{{- if .root.Values.nats.tls.caSecretName }}
- name: nats-ca
  secret:
    secretName: {{ .root.Values.nats.tls.caSecretName }}
    defaultMode: 0444
    items:
      - key: {{ .root.Values.nats.tls.caKey }}
        path: {{ .root.Values.nats.tls.caKey }}
{{- end }}
{{- end }}

{{/* Probes on the health listener's port `health`. */}}
{{- define "herald.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{/* Spread replicas over nodes and zones when the scheduler can. */}}
{{- define "herald.spread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "herald.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "herald.selectorLabels" . | nindent 8 }}
{{- end }}

{{/* nodeSelector, tolerations, affinity, priorityClassName of a component. */}}
{{- define "herald.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Extra HERALD_* settings of a component (`env`: every flag has one), sorted. */}}
{{- define "herald.extraEnv" -}}
{{- range $k, $v := .values.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}
