{{/*
Names.
*/}}
{{- define "galmorph.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "galmorph.fullname" -}}
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

{{/* "<fullname>-<component>" for component resources; call with (dict "root" $ "component" "mlflow"). */}}
{{- define "galmorph.componentName" -}}
{{- printf "%s-%s" (include "galmorph.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "galmorph.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "galmorph.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "galmorph.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Labels; call with (dict "root" $ "component" "mlflow").
*/}}
{{- define "galmorph.selectorLabels" -}}
app.kubernetes.io/name: {{ include "galmorph.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "galmorph.labels" -}}
helm.sh/chart: {{ include "galmorph.chart" .root }}
{{ include "galmorph.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: galmorph
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels shared by every pod of the release (used by the default-deny NetworkPolicy). */}}
{{- define "galmorph.releaseSelector" -}}
app.kubernetes.io/name: {{ include "galmorph.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* image reference; call with (dict "image" .Values.images.app) */}}
{{- define "galmorph.image" -}}
{{- printf "%s:%s" .image.repository .image.tag }}
{{- end }}

{{/* The ServiceAccount of one workload; call with (dict "root" $ "component" "mlflow"). */}}
{{- define "galmorph.componentServiceAccountName" -}}
{{- if .root.Values.serviceAccount.create }}
{{- printf "%s-%s" (include "galmorph.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .root.Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Pod spec fields common to every galmorph pod; call with (dict "root" $ "component" "mlflow"):
     each workload runs as its own ServiceAccount, without the Kubernetes API token. */}}
{{- define "galmorph.podCommon" -}}
{{- $root := .root }}
serviceAccountName: {{ include "galmorph.componentServiceAccountName" . }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Scheduling fields; call with a component's values. */}}
{{- define "galmorph.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "galmorph.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* The /tmp emptyDir volume (root filesystems are read-only). */}}
{{- define "galmorph.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "galmorph.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Environment every galmorph container gets: HOME and caches on the writable /tmp. */}}
{{- define "galmorph.baseEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: DO_NOT_TRACK
  value: "1"
{{- end }}

{{/* The projected KFP ServiceAccount token (multi-user Kubeflow). */}}
{{- define "galmorph.kfpTokenVolume" -}}
{{- if .Values.kfp.serviceAccountToken.enabled -}}
- name: kfp-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ .Values.kfp.serviceAccountToken.audience }}
          expirationSeconds: {{ .Values.kfp.serviceAccountToken.expirationSeconds }}
{{- end }}
{{- end }}

{{- define "galmorph.kfpTokenMount" -}}
{{- if .Values.kfp.serviceAccountToken.enabled -}}
- name: kfp-token
  mountPath: /var/run/secrets/kubeflow/pipelines
  readOnly: true
{{- end }}
{{- end }}

{{- define "galmorph.kfpTokenEnv" -}}
{{- if .Values.kfp.serviceAccountToken.enabled -}}
- name: KF_PIPELINES_SA_TOKEN_PATH
  value: /var/run/secrets/kubeflow/pipelines/token
{{- end }}
{{- end }}

{{/* Standard Ingress; call with (dict "root" $ "component" "mlflow" "ingress" .Values.mlflow.ingress "port" 5000). */}}
{{- define "galmorph.ingress" -}}
{{- $name := include "galmorph.componentName" (dict "root" .root "component" .component) -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ $name }}
  labels:
    {{- include "galmorph.labels" (dict "root" .root "component" .component) | nindent 4 }}
  {{- with .ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with .ingress.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- if .ingress.tlsSecretName }}
  tls:
    - hosts:
        - {{ .ingress.host | quote }}
      secretName: {{ .ingress.tlsSecretName }}
  {{- end }}
  rules:
    - host: {{ .ingress.host | quote }}
      http:
        paths:
          - path: {{ .ingress.path }}
            pathType: Prefix
            backend:
              service:
                name: {{ $name }}
                port:
                  name: http
{{- end }}

{{/* ClusterIP/NodePort Service; call with (dict "root" $ "component" "mlflow" "service" .Values.mlflow.service). */}}
{{- define "galmorph.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "galmorph.componentName" (dict "root" .root "component" .component) }}
  labels:
    {{- include "galmorph.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  type: {{ .service.type }}
  selector:
    {{- include "galmorph.selectorLabels" (dict "root" .root "component" .component) | nindent 4 }}
  ports:
    - name: http
      port: {{ .service.port }}
      targetPort: http
      protocol: TCP
{{- end }}

{{/* Peers allowed in from clients: labelled pods (optionally in other namespaces) and the ingress controller. */}}
{{- define "galmorph.clientPeers" -}}
- podSelector:
    matchLabels:
      {{ .root.Values.clients.podLabel.key }}: {{ .root.Values.clients.podLabel.value | quote }}
  {{- with .root.Values.clients.namespaceSelector }}
  namespaceSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .ingress.enabled }}
- namespaceSelector:
    {{- toYaml .root.Values.networkPolicy.ingressControllerNamespaceSelector | nindent 4 }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "galmorph.dnsEgress" -}}
{{- if .Values.networkPolicy.allowDns -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}
{{- end }}

{{/* Required-secret guard: fail rendering with a clear message when a reference is empty. */}}
{{- define "galmorph.requireRef" -}}
{{- if not .value }}
{{- fail (printf "%s must name an existing Secret (the chart never holds secret values)" .path) }}
{{- end }}
{{- end }}

{{/* A container of the CPU image running `galmorph ARGS` against KFP;
call with (dict "root" $ "args" LIST "resources" MAP "env" LIST "mounts" LIST); env and mounts optional. */}}
{{- define "galmorph.pipelineContainer" -}}
image: {{ include "galmorph.image" (dict "image" .root.Values.images.cpu) }}
imagePullPolicy: {{ .root.Values.images.cpu.pullPolicy }}
workingDir: {{ .root.Values.pipelines.upload.workingDir }}
command: ["galmorph"]
args:
  {{- range .args }}
  - {{ . | quote }}
  {{- end }}
env:
  {{- include "galmorph.baseEnv" .root | nindent 2 }}
  - name: GALMORPH_KFP_HOST
    value: {{ .root.Values.kfp.host | quote }}
  {{- include "galmorph.kfpTokenEnv" .root | nindent 2 }}
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
resources:
  {{- toYaml .resources | nindent 2 }}
{{ include "galmorph.containerSecurityContext" .root }}
volumeMounts:
  {{- include "galmorph.tmpMount" .root | nindent 2 }}
  {{- include "galmorph.kfpTokenMount" .root | nindent 2 }}
  {{- with .mounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
