{{/* Labels every object of the chart carries (pods and their owners add their selector's labels). */}}
{{- define "pearl.commonLabels" -}}
app.kubernetes.io/part-of: pearl-pipelines
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pearl.labels" -}}
{{ include "pearl.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The review app's pod labels: its Deployment's selector, the Service's, the PDB's. */}}
{{- define "pearl.reviewApp.selector" -}}
app.kubernetes.io/name: pearl-review-app
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pearl.mlflow.selector" -}}
app.kubernetes.io/name: mlflow
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pearl.image" -}}
{{ printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end -}}

{{- define "pearl.mlflowUri" -}}
{{- if .Values.mlflowUri -}}
{{ .Values.mlflowUri }}
{{- else -}}
{{ printf "http://mlflow.%s.svc:%v" .Release.Namespace .Values.mlflow.port }}
{{- end -}}
{{- end -}}

{{/* An EnvVar from a Secret's key: (list name secret key), or (list name secret key true) for a key that may be
absent (the variable is then unset). */}}
{{- define "pearl.secretEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 }}
      key: {{ index . 2 }}
      {{- if gt (len .) 3 }}
      optional: {{ index . 3 }}
      {{- end }}
{{- end -}}

{{/* The object store's endpoint (absent: AWS S3 itself) and keys, as boto3 and MLflow read them. */}}
{{- define "pearl.objectStoreEnv" -}}
{{ include "pearl.secretEnv" (list "AWS_ENDPOINT_URL" .Values.secrets.objectStore "endpoint-url" true) }}
{{ include "pearl.secretEnv" (list "AWS_ACCESS_KEY_ID" .Values.secrets.objectStore "access-key-id") }}
{{ include "pearl.secretEnv" (list "AWS_SECRET_ACCESS_KEY" .Values.secrets.objectStore "secret-access-key") }}
{{- end -}}

{{/* The Host headers MLflow serves: its Service's cluster names (bare and with a port), localhost, extras. */}}
{{- define "pearl.mlflow.allowedHosts" -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list "localhost" "127.0.0.1" "mlflow" (printf "mlflow.%s" $ns) (printf "mlflow.%s.svc" $ns) (printf "mlflow.%s.svc.cluster.local" $ns) -}}
{{- $out := list -}}
{{- range $hosts }}{{ $out = append $out . }}{{ $out = append $out (printf "%s:*" .) }}{{ end -}}
{{- join "," (concat $out .Values.mlflow.allowedHosts) -}}
{{- end -}}
