{{- define "kvgate-epp.name" -}}
{{- printf "%s-epp" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvgate-epp.labels" -}}
app.kubernetes.io/name: kvgate-epp
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kvgate-epp.selectorLabels" -}}
app: {{ include "kvgate-epp.name" . }}
{{- end -}}

{{- define "kvgate-epp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvgate-epp.name" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kvgate-epp.hubName" -}}
{{- printf "%s-hub" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* What the hub controller does in the hub: InferencePoolImports created, read back, deleted, status written. */}}
{{- define "kvgate-epp.hubImportRules" -}}
- apiGroups: ["inference.networking.x-k8s.io"]
  resources: ["inferencepoolimports"]
  verbs: ["create", "get", "list", "delete"]
- apiGroups: ["inference.networking.x-k8s.io"]
  resources: ["inferencepoolimports/status"]
  verbs: ["patch"]
{{- end -}}

{{/* The InferencePool's version: v1 (the default) or the older v1alpha2 (kvgate epp --pool-group), else a fail. */}}
{{- define "kvgate-epp.poolV1alpha2" -}}
{{- $v := .Values.inferencePool.apiVersion -}}
{{- if eq $v "inference.networking.x-k8s.io/v1alpha2" -}}
true
{{- else if ne $v "inference.networking.k8s.io/v1" -}}
{{- fail (printf "inferencePool.apiVersion: %s is neither inference.networking.k8s.io/v1 nor inference.networking.x-k8s.io/v1alpha2" $v) -}}
{{- end -}}
{{- end -}}
