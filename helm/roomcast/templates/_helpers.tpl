{{/* Chart name. */}}
{{- define "roomcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless overridden. */}}
{{- define "roomcast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "roomcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "roomcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roomcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "roomcast.labels" -}}
helm.sh/chart: {{ include "roomcast.chart" . }}
{{ include "roomcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "roomcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "roomcast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding keys and the Redis URL: the user's, or the chart's. */}}
{{- define "roomcast.secretName" -}}
{{- default (include "roomcast.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "roomcast.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Termination grace: never shorter than preStop sleep + the gateway's shutdown timeout. */}}
{{- define "roomcast.terminationGracePeriodSeconds" -}}
{{- $min := add .Values.shutdown.preStopSleepSeconds .Values.shutdown.timeoutSeconds 5 }}
{{- if kindIs "invalid" .Values.shutdown.terminationGracePeriodSeconds }}
{{- $min }}
{{- else }}
{{- max $min .Values.shutdown.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Whether the publish API has keys (from values or, unknowable at render time, an existing Secret). */}}
{{- define "roomcast.hasApiKeys" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.apiKeys }}true{{ end }}
{{- end }}

{{/* Settings that render fine but would run a broken cluster: fail at install time instead. */}}
{{- define "roomcast.validate" -}}
{{- $replicated := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and $replicated (not .Values.redis.url) (not .Values.secrets.existingSecret) }}
{{- fail "more than one replica needs redis.url (or a redis-url key in secrets.existingSecret): without Redis, clients on different replicas would not see each other's events" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if ge (int .Values.shutdown.drainDelaySeconds) (int .Values.shutdown.timeoutSeconds) }}
{{- fail "shutdown.drainDelaySeconds must be shorter than shutdown.timeoutSeconds (the timeout includes the drain delay)" }}
{{- end }}
{{- if eq (int .Values.containerPorts.public) (int .Values.containerPorts.admin) }}
{{- fail "containerPorts.public and containerPorts.admin must differ" }}
{{- end }}
{{- end }}
