{{- define "conclave.name" -}}{{ .Release.Name }}-conclave{{- end -}}

{{- define "conclave.labels" -}}
app.kubernetes.io/name: conclave
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "conclave.secretName" -}}{{ .Values.existingSecret | default (include "conclave.name" .) }}{{- end -}}

{{/* The database URL every service reads: the external one, or the in-chart Postgres. */}}
{{- define "conclave.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "conclave.name" . }}-database, key: DATABASE_URL}
{{- end -}}

{{/* What every Conclave container shares: the key, the database, the shared env, the vLLM server when on. */}}
{{- define "conclave.commonEnv" -}}
- name: API_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "conclave.secretName" . }}, key: API_KEY}
{{ include "conclave.databaseEnv" . }}
{{- if .Values.vllm.enabled }}
- name: REMOTE_URL
  value: http://{{ include "conclave.name" . }}-vllm:{{ .Values.vllm.port }}/v1
- name: REMOTE_MODEL
  value: {{ .Values.vllm.servedModelName | quote }}
{{- end }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{/* Readiness is /ready (the probe sends the API key, which /ready needs); liveness is /health (open). */}}
{{- define "conclave.probes" -}}
startupProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 5
  failureThreshold: 120
readinessProbe:
  exec:
    command: ["python", "-m", "common.healthcheck"]
  periodSeconds: 10
  timeoutSeconds: 6
livenessProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}
