{{/*
Names, labels and the pieces every pod shares. Templates call these with the root context
(`.`) unless a comment says otherwise; anything shared by two templates lives here, so the
operator's flags and the objects they name cannot drift apart.
*/}}

{{- define "quiver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name. Kept to 40 characters: the longest derived name
("<fullname>-ray-head-svc", KubeRay's head Service) must still fit a 63-character DNS label.
*/}}
{{- define "quiver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "quiver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that never change for the life of an object: selectors use these. */}}
{{- define "quiver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quiver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The recommended app.kubernetes.io/* labels, on every object the chart renders. */}}
{{- define "quiver.labels" -}}
helm.sh/chart: {{ include "quiver.chart" . }}
{{ include "quiver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quiver
{{- end }}

{{/* Labels of one component. Call with (dict "ctx" $ "component" "router"). */}}
{{- define "quiver.componentLabels" -}}
{{ include "quiver.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector of one component. Call with (dict "ctx" $ "component" "router"). */}}
{{- define "quiver.componentSelector" -}}
{{ include "quiver.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Names of the objects the components find each other by. */}}
{{- define "quiver.operatorName" -}}{{ include "quiver.fullname" . }}-operator{{- end }}
{{- define "quiver.routerName" -}}{{ include "quiver.fullname" . }}-router{{- end }}
{{- define "quiver.routesConfigMap" -}}{{ include "quiver.fullname" . }}-routes{{- end }}
{{- define "quiver.healthConfigMap" -}}{{ include "quiver.fullname" . }}-grpc-health{{- end }}
{{- define "quiver.rayClusterName" -}}{{ include "quiver.fullname" . }}-ray{{- end }}
{{/* KubeRay names the head Service "<raycluster>-head-svc". */}}
{{- define "quiver.rayHeadService" -}}{{ include "quiver.rayClusterName" . }}-head-svc{{- end }}

{{/* The pools' names, comma-separated, as the operator takes them. */}}
{{- define "quiver.poolNames" -}}
{{- $names := list }}
{{- range .Values.pools }}{{ $names = append $names .name }}{{ end }}
{{- join "," $names }}
{{- end }}

{{- define "quiver.modelsClaim" -}}
{{- .Values.modelStore.existingClaim | default (printf "%s-models" (include "quiver.fullname" .)) }}
{{- end }}

{{- define "quiver.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- .Values.operator.serviceAccount.name | default (include "quiver.operatorName" .) }}
{{- else }}
{{- .Values.operator.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The identity of the optimization Jobs; empty means the operator's own default. */}}
{{- define "quiver.jobServiceAccount" -}}
{{- if .Values.operator.jobs.serviceAccount.create }}
{{- .Values.operator.jobs.serviceAccount.name | default (printf "%s-optimize" (include "quiver.fullname" .)) }}
{{- else }}
{{- .Values.operator.jobs.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quiver.routerTLSSecret" -}}
{{- .Values.router.tls.secretName | default (printf "%s-tls" (include "quiver.routerName" .)) }}
{{- end }}
{{- define "quiver.routerClientCASecret" -}}
{{- .Values.router.tls.clientCA.secretName | default (include "quiver.routerTLSSecret" .) }}
{{- end }}
{{/* The certificate the probes and `helm test` present when the router requires one (mTLS). */}}
{{- define "quiver.probeClientSecret" -}}
{{- .Values.router.tls.probeClientSecret | default (include "quiver.routerTLSSecret" .) }}
{{- end }}
{{- define "quiver.routerTokensSecret" -}}
{{- .Values.router.tokens.secretName | default (printf "%s-tokens" (include "quiver.routerName" .)) }}
{{- end }}

{{- define "quiver.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Empty when there are none; callers indent it with `with`. */}}
{{- define "quiver.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "quiver.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "quiver.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}

{{/*
Scratch space. The root filesystem is read-only, and Ray keeps its session directory,
sockets and logs under /tmp (as do Python libraries that cache).
*/}}
{{- define "quiver.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end }}
{{- define "quiver.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Ray's object store lives in /dev/shm; a container's default /dev/shm is 64 MiB, so give it a
memory-backed volume of the size asked for (it counts against the container's memory limit).
Call with (dict "size" "1Gi").
*/}}
{{- define "quiver.shmVolume" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .size }}
{{- end }}
{{- define "quiver.shmMount" -}}
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* The shared model store: every component reads and the optimization Jobs write it. */}}
{{- define "quiver.storeVolume" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "quiver.modelsClaim" . }}
{{- end }}
{{- define "quiver.storeMount" -}}
- name: models
  mountPath: /models
{{- end }}

{{/* Environment every Ray node (head, workers, routers) shares. */}}
{{- define "quiver.rayEnv" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: {{ ternary "1" "0" .Values.ray.usageStats | quote }}
- name: RAY_gcs_rpc_server_reconnect_timeout_s
  value: {{ .Values.ray.gcsReconnectTimeoutSeconds | quote }}
{{- end }}

{{- define "quiver.rayGcsClaim" -}}
{{ include "quiver.fullname" . }}-ray-gcs
{{- end }}

{{/* The Secret with Ray's auth token (key auth_token); KubeRay generates it unless named. */}}
{{- define "quiver.rayAuthSecret" -}}
{{- .Values.ray.auth.secretName | default (include "quiver.rayClusterName" .) }}
{{- end }}

{{/*
Ray token authentication for the processes KubeRay does not manage (the routers join the
cluster, the operator calls the Serve REST API); KubeRay injects the same into its own pods.
*/}}
{{- define "quiver.rayAuthEnv" -}}
{{- if .Values.ray.auth.enabled -}}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "quiver.rayAuthSecret" . }}
      key: auth_token
{{- end }}
{{- end }}

{{/*
The model keys (modelSecurity), where the operator tells the replicas to find them. Call with
(dict "ctx" $ "decrypt" true|false): the operator verifies, only replicas decrypt. These and
quiver.rayAuthEnv may render nothing: callers indent them with `with include`.
*/}}
{{- define "quiver.modelKeyPath" -}}/etc/quiver/model-key/key{{- end }}
{{- define "quiver.verifyKeyPath" -}}/etc/quiver/verify-key/key.pub{{- end }}
{{- define "quiver.modelKeyVolumes" -}}
{{- $keys := .ctx.Values.modelSecurity -}}
{{- if and .decrypt $keys.encryptionKeySecret }}
- name: model-key
  secret:
    secretName: {{ $keys.encryptionKeySecret }}
    items:
      - key: key
        path: key
{{- end }}
{{- with $keys.verifyKeySecret }}
- name: verify-key
  secret:
    secretName: {{ . }}
    items:
      - key: key.pub
        path: key.pub
{{- end }}
{{- end }}
{{- define "quiver.modelKeyMounts" -}}
{{- $keys := .ctx.Values.modelSecurity -}}
{{- if and .decrypt $keys.encryptionKeySecret }}
- name: model-key
  mountPath: /etc/quiver/model-key
  readOnly: true
{{- end }}
{{- if $keys.verifyKeySecret }}
- name: verify-key
  mountPath: /etc/quiver/verify-key
  readOnly: true
{{- end }}
{{- end }}

{{/*
The nodes a pool's pods may land on (empty when unconstrained; callers indent it with `with`). Call with (dict "ctx" $ "pool" $pool): a GPU pool adds
ray.gpuNodeSelector to its own nodeSelector, so it lands only on GPU nodes.
*/}}
{{- define "quiver.poolNodeSelector" -}}
{{- $selector := deepCopy (.pool.nodeSelector | default dict) }}
{{- if gt (int (.pool.gpus | default 0)) 0 }}
{{- $selector = merge $selector .ctx.Values.ray.gpuNodeSelector }}
{{- end }}
{{- with $selector -}}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A pool's tolerations: its own, plus the taint GPU nodes usually carry (the NVIDIA device
plugin's convention) for a GPU pool. Call with (dict "pool" $pool).
*/}}
{{- define "quiver.poolTolerations" -}}
{{- $tolerations := .pool.tolerations | default list }}
{{- if gt (int (.pool.gpus | default 0)) 0 }}
{{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") }}
{{- end }}
{{- with $tolerations -}}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
`ray start --resources` for pool P: {"pool-P": 10000}. rayStartParams values are pasted into a
bash command line by KubeRay, so the JSON is wrapped in double quotes with its own quotes
escaped ("{\"pool-cpu\": 10000}"), as KubeRay's samples do. Call with the pool's name.
*/}}
{{- define "quiver.poolRayResources" -}}
{{- $json := dict (printf "pool-%s" .) 10000 | toJson }}
{{- printf "\"%s\"" ($json | replace "\"" "\\\"") }}
{{- end }}

{{/*
gRPC health check of the router, run by its probes (when TLS is on: the kubelet's native gRPC
probe cannot speak TLS) and by `helm test`. Call with (dict "ctx" $ "address" "host:port"
"mode" "ready"|"alive").
*/}}
{{- define "quiver.healthCommand" -}}
- python
- /etc/quiver/health/router_health.py
- {{ .address }}
- --{{ .mode }}
{{- if .ctx.Values.router.tls.enabled }}
- --tls-cert
- /etc/quiver/tls/tls.crt
{{- if .ctx.Values.router.tls.clientCA.enabled }}
- --client-cert
- /etc/quiver/probe-client/tls.crt
- --client-key
- /etc/quiver/probe-client/tls.key
{{- end }}
{{- end }}
{{- end }}

{{/*
Probes of a Ray node: the dashboard agent's unified health endpoint (Ray >= 2.53), which checks
the raylet and, on the head, the GCS. The same probes KubeRay would inject, written out so
that every container in the chart shows its probes.
*/}}
{{- define "quiver.rayProbes" -}}
livenessProbe:
  httpGet:
    path: /api/healthz
    port: 52365
  initialDelaySeconds: 30
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 120
readinessProbe:
  httpGet:
    path: /api/healthz
    port: 52365
  initialDelaySeconds: 10
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 10
{{- end }}

{{/* NetworkPolicy peers: every Ray node of this release (head, pool workers, routers). */}}
{{- define "quiver.rayNodesPeer" -}}
- podSelector:
    matchLabels:
      {{- include "quiver.selectorLabels" . | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [ray-head, ray-worker, router]
{{- end }}
{{/* NetworkPolicy peer: the operator pod. */}}
{{- define "quiver.operatorPeer" -}}
- podSelector:
    matchLabels:
      {{- include "quiver.componentSelector" (dict "ctx" . "component" "operator") | nindent 6 }}
{{- end }}
