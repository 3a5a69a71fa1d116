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

{{/* Namespace of every namespaced resource. */}}
{{- define "roomcast.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "roomcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "roomcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roomcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource but the component: commonLabels, less the chart's own (which
cannot be overridden). */}}
{{- define "roomcast.releaseLabels" -}}
{{ with omit .Values.commonLabels "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/component" }}{{ toYaml . }}
{{ end -}}
helm.sh/chart: {{ include "roomcast.chart" . }}
{{ include "roomcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of every resource (component: gateway). The API Service is component "api", so the
ServiceMonitor, which selects component "gateway", scrapes the main Service only. */}}
{{- define "roomcast.labels" -}}
{{ include "roomcast.releaseLabels" . }}
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

{{/* The image: repository@digest when a digest is given (it pins the bytes; the tag is then ignored). */}}
{{- define "roomcast.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
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

{{/* Whether the API has keys (from values, or an existing Secret's declared key). */}}
{{- define "roomcast.hasApiKeys" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretKeys.apiKeys }}true{{ end }}
{{- else if .Values.secrets.apiKeys }}true{{ end }}
{{- end }}

{{/* Whether there are tenant-scoped API keys (from values, or an existing Secret's declared key). */}}
{{- define "roomcast.hasTenantApiKeys" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretKeys.tenantApiKeys }}true{{ end }}
{{- else if .Values.secrets.tenantApiKeys }}true{{ end }}
{{- end }}

{{/* Whether the replicas get an RPC secret (from values or an existing Secret's key). */}}
{{- define "roomcast.hasRpcSecret" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretKeys.rpcSecret }}true{{ end }}
{{- else if .Values.secrets.rpcSecret }}true{{ end }}
{{- end }}

{{/* Whether any backend URL is set (config.backend): they all need the RPC secret. */}}
{{- define "roomcast.hasBackend" -}}
{{- with .Values.config.backend }}{{ if or .rpc.url .rpc.routes .publishProxyUrl .connectProxy.url .subscribeProxyUrl }}true{{ end }}{{ end }}
{{- end }}

{{/* config.backend.rpc.routes as ROOMCAST_RPC_ROUTES: prefix=url, comma-separated, sorted. */}}
{{- define "roomcast.rpcRoutes" -}}
{{- $routes := list }}{{ range $prefix, $url := . }}{{ $routes = append $routes (printf "%s=%s" $prefix $url) }}{{ end }}{{ join "," $routes }}
{{- end }}

{{/* Whether the replicas get console tokens (from values or an existing Secret's key). */}}
{{- define "roomcast.hasConsoleTokens" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretKeys.consoleTokens }}true{{ end }}
{{- else if .Values.secrets.consoleTokens }}true{{ end }}
{{- end }}

{{/* Whether the replicas get a webhook secret (from values or an existing Secret's key). */}}
{{- define "roomcast.hasWebhookSecret" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretKeys.webhookSecret }}true{{ end }}
{{- else if .Values.secrets.webhookSecret }}true{{ end }}
{{- end }}

{{/* Whether the backend API is enabled: it is with any key, of every tenant or of some. */}}
{{- define "roomcast.apiEnabled" -}}
{{- if or (include "roomcast.hasApiKeys" .) (include "roomcast.hasTenantApiKeys" .) }}true{{ end }}
{{- end }}

{{/* Whether the replicas get a Redis URL (from values or an existing Secret's key). */}}
{{- define "roomcast.hasRedis" -}}
{{- if .Values.secrets.existingSecret }}{{ if .Values.secrets.existingSecretKeys.redisUrl }}true{{ end }}
{{- else if .Values.redis.url }}true{{ end }}
{{- end }}

{{/* Where the Secret's files are mounted in the gateway container. */}}
{{- define "roomcast.secretsDir" -}}/etc/roomcast/secrets{{- end }}

{{/*
The files of the chart's Secret (or existingSecret) the gateway reads, as YAML
{file name: {key, env}}: the key in the Secret and the ROOMCAST_*_FILE variable that points at
the file. Empty when there is nothing to mount.
*/}}
{{- define "roomcast.secretFiles" -}}
{{- $existing := .Values.secrets.existingSecret }}
{{- $keys := .Values.secrets.existingSecretKeys }}
{{- $files := dict }}
{{- $mode := .Values.auth.mode }}
{{- if eq $mode "hmac" }}
{{- $_ := set $files "jwt-secret" (dict "key" (ternary $keys.jwtSecret "jwt-secret" (not (empty $existing))) "env" "ROOMCAST_JWT_SECRET_FILE") }}
{{- else if eq $mode "publicKey" }}
{{- $_ := set $files "jwt-public-key.pem" (dict "key" (ternary $keys.jwtPublicKey "jwt-public-key.pem" (not (empty $existing))) "env" "ROOMCAST_JWT_PUBLIC_KEY_FILE") }}
{{- else if eq $mode "jwks" }}
{{- $_ := set $files "jwks.json" (dict "key" (ternary $keys.jwks "jwks.json" (not (empty $existing))) "env" "ROOMCAST_JWKS_FILE") }}
{{- end }}
{{- if include "roomcast.hasApiKeys" . }}
{{- $_ := set $files "api-keys" (dict "key" (ternary $keys.apiKeys "api-keys" (not (empty $existing))) "env" "ROOMCAST_API_KEY_FILE") }}
{{- end }}
{{- if include "roomcast.hasTenantApiKeys" . }}
{{- $_ := set $files "tenant-api-keys.json" (dict "key" (ternary $keys.tenantApiKeys "tenant-api-keys.json" (not (empty $existing))) "env" "ROOMCAST_TENANT_API_KEYS_FILE") }}
{{- end }}
{{- if include "roomcast.hasRedis" . }}
{{- $_ := set $files "redis-url" (dict "key" (ternary $keys.redisUrl "redis-url" (not (empty $existing))) "env" "ROOMCAST_REDIS_URL_FILE") }}
{{- end }}
{{- if include "roomcast.hasWebhookSecret" . }}
{{- $_ := set $files "webhook-secret" (dict "key" (ternary $keys.webhookSecret "webhook-secret" (not (empty $existing))) "env" "ROOMCAST_WEBHOOK_SECRET_FILE") }}
{{- end }}
{{- if include "roomcast.hasRpcSecret" . }}
{{- $_ := set $files "rpc-secret" (dict "key" (ternary $keys.rpcSecret "rpc-secret" (not (empty $existing))) "env" "ROOMCAST_RPC_SECRET_FILE") }}
{{- end }}
{{- if include "roomcast.hasConsoleTokens" . }}
{{- $_ := set $files "console-tokens" (dict "key" (ternary $keys.consoleTokens "console-tokens" (not (empty $existing))) "env" "ROOMCAST_CONSOLE_TOKENS_FILE") }}
{{- end }}
{{- if $files }}
{{- toYaml $files }}
{{- end }}
{{- end }}

{{/* The trusted issuers as the gateway's issuers.json ({"issuers": [...]}, snake_case keys). */}}
{{- define "roomcast.issuersJson" -}}
{{- $issuers := list }}
{{- range .Values.auth.trustedIssuers }}
{{- $entry := dict "issuer" .issuer }}
{{- with .jwksUrl }}{{ $_ := set $entry "jwks_url" . }}{{ end }}
{{- with .jwksFile }}{{ $_ := set $entry "jwks_file" . }}{{ end }}
{{- with .publicKeyFile }}{{ $_ := set $entry "public_key_file" . }}{{ end }}
{{- $_ := set $entry "audiences" (default list .audiences) }}
{{- $_ := set $entry "tenants" .tenants }}
{{- $issuers = append $issuers $entry }}
{{- end }}
{{- dict "issuers" $issuers | toPrettyJson }}
{{- end }}

{{/* The Redis CA bundle source: "secret", "configMap" or empty. */}}
{{- define "roomcast.redisCa" -}}
{{- if .Values.redis.tls.caSecret.name }}secret{{ else if .Values.redis.tls.caConfigMap.name }}configMap{{ end }}
{{- end }}

{{/* Settings that render fine but would run a broken cluster: fail at install time instead. */}}
{{- define "roomcast.validate" -}}
{{- $replicated := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and $replicated (not (include "roomcast.hasRedis" .)) }}
{{- fail "more than one replica needs redis.url (or a redis-url key in secrets.existingSecret, see secrets.existingSecretKeys.redisUrl): without Redis, clients on different replicas would not see each other's events" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if ge (int .Values.shutdown.drainDelaySeconds) (int .Values.shutdown.timeoutSeconds) }}
{{- fail "shutdown.drainDelaySeconds must be shorter than shutdown.timeoutSeconds (the timeout includes the drain delay)" }}
{{- end }}
{{- $ports := list (int .Values.containerPorts.public) (int .Values.containerPorts.api) (int .Values.containerPorts.admin) }}
{{- if ne (len (uniq $ports)) 3 }}
{{- fail "containerPorts.public, containerPorts.api and containerPorts.admin must all differ" }}
{{- end }}
{{- /* Lifecycle events: a webhook needs its secret, the stream needs Redis. */}}
{{- if and .Values.config.events.webhook.urls (not (include "roomcast.hasWebhookSecret" .)) }}
{{- fail "config.events.webhook.urls needs secrets.webhookSecret (32+ bytes), or secrets.existingSecretKeys.webhookSecret naming a key of secrets.existingSecret" }}
{{- end }}
{{- if and (include "roomcast.hasWebhookSecret" .) (not .Values.config.events.webhook.urls) }}
{{- fail "a webhook secret is set but config.events.webhook.urls is empty: set the URLs, or leave the secret out" }}
{{- end }}
{{- /* The backend: every URL needs the RPC secret, and the secret a URL. */}}
{{- if and (include "roomcast.hasBackend" .) (not (include "roomcast.hasRpcSecret" .)) }}
{{- fail "config.backend URLs need secrets.rpcSecret (32+ bytes), or secrets.existingSecretKeys.rpcSecret naming a key of secrets.existingSecret" }}
{{- end }}
{{- if and (eq .Values.config.backend.connectProxy.mode "proxy_only") (or (not .Values.config.corsOrigins) (has "*" .Values.config.corsOrigins)) }}
{{- fail "config.backend.connectProxy.mode proxy_only logs browsers in by cookie: set config.corsOrigins to the app's origins (not *)" }}
{{- end }}
{{- if and (include "roomcast.hasRpcSecret" .) (not (include "roomcast.hasBackend" .)) }}
{{- fail "an RPC secret is set but no config.backend URL is: set one, or leave the secret out" }}
{{- end }}
{{- if and .Values.config.events.stream (not (include "roomcast.hasRedis" .)) }}
{{- fail "config.events.stream needs Redis (redis.url, or a redis-url key in secrets.existingSecret)" }}
{{- end }}
{{- /* Authentication: exactly one way to know each token's keys. */}}
{{- $mode := .Values.auth.mode }}
{{- if and (eq $mode "jwksUrl") (not .Values.auth.jwksUrl) }}
{{- fail "auth.mode=jwksUrl needs auth.jwksUrl (the identity provider's JWKS endpoint, https://…/.well-known/jwks.json)" }}
{{- end }}
{{- if and .Values.auth.jwksUrl (ne $mode "jwksUrl") }}
{{- fail (printf "auth.jwksUrl is set but auth.mode is %s: set auth.mode=jwksUrl, or list the provider in auth.trustedIssuers" $mode) }}
{{- end }}
{{- if and (eq $mode "issuers") (not .Values.auth.trustedIssuers) }}
{{- fail "auth.mode=issuers needs auth.trustedIssuers (at least one {issuer, jwksUrl | jwksFile | publicKeyFile})" }}
{{- end }}
{{- if and (eq $mode "issuers") .Values.auth.issuers }}
{{- fail "auth.issuers lists the accepted iss of the single key of auth.mode; with auth.mode=issuers each of auth.trustedIssuers names its own issuer: leave auth.issuers empty" }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $t := .Values.auth.trustedIssuers }}
{{- $sources := 0 }}
{{- range (list "jwksUrl" "jwksFile" "publicKeyFile") }}{{ if index $t . }}{{ $sources = add1 $sources }}{{ end }}{{ end }}
{{- if ne (int $sources) 1 }}
{{- fail (printf "auth.trustedIssuers[%d] (%s) needs exactly one of jwksUrl, jwksFile, publicKeyFile" $i (toString $t.issuer)) }}
{{- end }}
{{- if hasKey $seen (toString $t.issuer) }}
{{- fail (printf "auth.trustedIssuers lists issuer %s twice" $t.issuer) }}
{{- end }}
{{- $_ := set $seen (toString $t.issuer) true }}
{{- end }}
{{- /* With trusted issuers the gateway takes a token with an `iss` from the default key only if
ROOMCAST_JWT_ISSUER (auth.issuers) lists that iss (gateway/src/auth.rs, trust_for). */}}
{{- if and .Values.auth.trustedIssuers (ne $mode "issuers") (not .Values.auth.issuers) }}
{{- fail (printf "auth.trustedIssuers with auth.mode=%s needs auth.issuers: next to trusted issuers the gateway accepts a token carrying an iss from the auth.mode=%s key only if auth.issuers lists that iss, so every such token of your default provider (identity providers always set iss) would be refused. Set auth.issuers to the iss of the provider behind auth.mode=%s, or list that provider in auth.trustedIssuers and use auth.mode=issuers" $mode $mode $mode) }}
{{- end }}
{{- /* Secrets. */}}
{{- if and .Values.secrets.existingSecret .Values.redis.url }}
{{- fail "redis.url is stored in the chart's Secret, which is not created with secrets.existingSecret: put the URL in your Secret, under the key secrets.existingSecretKeys.redisUrl (redis-url)" }}
{{- end }}
{{- if and .Values.secrets.existingSecret .Values.secrets.tenantApiKeys }}
{{- fail "secrets.tenantApiKeys is stored in the chart's Secret, which is not created with secrets.existingSecret: put the tenant keys file ({\"keys\": [{\"key\", \"tenants\"}]}) in your Secret and name its key in secrets.existingSecretKeys.tenantApiKeys" }}
{{- end }}
{{- /* The gateway refuses to start when a key has two scopes; the error names entries by
index, never by the key itself (it is a secret). */}}
{{- $tenantKeys := dict }}
{{- range $i, $k := .Values.secrets.tenantApiKeys }}
{{- if has (toString $k.key) (default list $.Values.secrets.apiKeys) }}
{{- fail (printf "secrets.tenantApiKeys[%d].key is also one of secrets.apiKeys: a key has one scope (every tenant, or only its tenants), and the gateway refuses to start with a key in both. Give the tenant key a value of its own" $i) }}
{{- end }}
{{- if hasKey $tenantKeys (toString $k.key) }}
{{- fail (printf "secrets.tenantApiKeys[%d].key is the key of secrets.tenantApiKeys[%d] too: the gateway refuses to start with a key listed twice. List the key once, with all of its tenants" $i (index $tenantKeys (toString $k.key))) }}
{{- end }}
{{- $_ := set $tenantKeys (toString $k.key) $i }}
{{- end }}
{{- if and .Values.redis.existingPasswordSecret.name (not (include "roomcast.hasRedis" .)) }}
{{- fail "redis.existingPasswordSecret needs a Redis URL (redis.url, or secrets.existingSecretKeys.redisUrl in secrets.existingSecret)" }}
{{- end }}
{{- if and .Values.redis.tls.caSecret.name .Values.redis.tls.caConfigMap.name }}
{{- fail "set one of redis.tls.caSecret and redis.tls.caConfigMap, not both" }}
{{- end }}
{{- if and (include "roomcast.redisCa" .) .Values.redis.url (not (regexMatch "^(redis|valkey)s(-cluster|-sentinel)?://" .Values.redis.url)) }}
{{- fail "redis.tls.caSecret/caConfigMap verify a TLS connection: redis.url must be rediss:// (or rediss-cluster://, rediss-sentinel://, valkeys://)" }}
{{- end }}
{{- /* Deployment and disruption settings. */}}
{{- if and (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable are mutually exclusive: set one, leave the other null" }}
{{- end }}
{{- if and .Values.lifecycle.preStop (gt (int .Values.shutdown.preStopSleepSeconds) 0) }}
{{- fail "lifecycle.preStop and shutdown.preStopSleepSeconds both define the preStop hook: set one of them (put a sleep in your own preStop if you need both)" }}
{{- end }}
{{- if and (gt (int .Values.shutdown.preStopSleepSeconds) 0) (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "shutdown.preStopSleepSeconds needs Kubernetes >= 1.30 (the preStop sleep action); this cluster is %s: set it to 0 (the gateway's drain delay does the same job)" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if eq .Values.strategy.type "RollingUpdate" }}
{{- $zero := 0 }}
{{- range (list "maxSurge" "maxUnavailable") }}
{{- $v := index (default dict $.Values.strategy.rollingUpdate) . }}
{{- if and (not (kindIs "invalid" $v)) (regexMatch "^0+(\\.0+)?%?$" (toString $v)) }}{{ $zero = add1 $zero }}{{ end }}
{{- end }}
{{- if eq (int $zero) 2 }}
{{- fail "strategy.rollingUpdate.maxSurge and strategy.rollingUpdate.maxUnavailable are both 0: a rollout could never replace a pod, and the API server refuses the Deployment. Keep maxSurge: 1 (the default), or with hostNetwork use maxSurge: 0 and maxUnavailable: 1" }}
{{- end }}
{{- end }}
{{- /* Network exposure. */}}
{{- $np := .Values.networkPolicy }}
{{- if and $np.enabled .Values.hostNetwork }}
{{- fail "networkPolicy.enabled cannot protect hostNetwork pods: NetworkPolicy does not apply to pods in the node's network namespace, so the API port (containerPorts.api) and the admin port (containerPorts.admin) would be open to anything that reaches a node. Set hostNetwork: false, or networkPolicy.enabled: false and close those ports on the nodes' firewall yourself" }}
{{- end }}
{{- if and $np.enabled .Values.serviceMonitor.enabled (not $np.admin.from) (not $np.admin.namespaces) }}
{{- fail "networkPolicy.enabled with serviceMonitor.enabled needs networkPolicy.admin.namespaces (the namespace Prometheus runs in, e.g. [monitoring]) or networkPolicy.admin.from: without an admin peer the NetworkPolicy keeps Prometheus from scraping /metrics" }}
{{- end }}
{{- if and (eq .Values.api.service.type "LoadBalancer") (not .Values.api.service.loadBalancerSourceRanges) (not .Values.api.service.allowPublicLoadBalancer) }}
{{- fail "api.service.type=LoadBalancer without api.service.loadBalancerSourceRanges would expose the backend API (POST /v1/publish) to every address that reaches the load balancer: set api.service.loadBalancerSourceRanges to your backends' CIDRs, or, for a load balancer that is internal by its annotations, set api.service.allowPublicLoadBalancer: true" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetConnectionsPerPod) (not .Values.autoscaling.metrics) }}
{{- fail "autoscaling.enabled needs a metric: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage, targetConnectionsPerPod or autoscaling.metrics" }}
{{- end }}
{{- end }}

{{/* A probe's timing fields, from probes.<name>. */}}
{{- define "roomcast.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
successThreshold: {{ .successThreshold }}
failureThreshold: {{ .failureThreshold }}
{{- end }}

{{/* Labels of the `helm test` pod: the release's, but not the gateway's selector. */}}
{{- define "roomcast.testLabels" -}}
{{ with omit .Values.commonLabels "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/component" }}{{ toYaml . }}
{{ end -}}
helm.sh/chart: {{ include "roomcast.chart" . }}
app.kubernetes.io/name: {{ printf "%s-test" (include "roomcast.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: test
{{- end }}

{{/* The relay's selector labels: its own name, so no gateway selector (Services, PDB,
ServiceMonitor) ever picks its pods. */}}
{{- define "roomcast.relaySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-relay" (include "roomcast.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the relay's resources. */}}
{{- define "roomcast.relayLabels" -}}
{{ with omit .Values.commonLabels "helm.sh/chart" "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/component" }}{{ toYaml . }}
{{ end -}}
helm.sh/chart: {{ include "roomcast.chart" . }}
{{ include "roomcast.relaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: relay
{{- end }}
