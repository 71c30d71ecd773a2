{{/* Names and labels shared by every template. */}}

{{- define "maculaos.fullname" -}}
{{- if contains "maculaos" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-maculaos" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "maculaos.labels" -}}
app.kubernetes.io/part-of: maculaos
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "maculaos.operatorSelector" -}}
app.kubernetes.io/name: maculaos-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "maculaos.agentSelector" -}}
app.kubernetes.io/name: maculaos-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "maculaos.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "maculaos.operatorServiceAccount" -}}
{{- printf "%s-operator" (include "maculaos.fullname" .) -}}
{{- end -}}

{{- define "maculaos.agentServiceAccount" -}}
{{- printf "%s-agent" (include "maculaos.fullname" .) -}}
{{- end -}}
