{{/* Release-scoped names and labels. */}}

{{- define "epochserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "epochserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: epochserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: call with (list $ "operator"). */}}
{{- define "epochserve.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ printf "%s-%s" $root.Chart.Name (index . 1) }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{- define "epochserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "epochserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "epochserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "epochserve.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "epochserve.fullname" .)) .Values.adminToken.secretName -}}
{{- end -}}

{{- define "epochserve.etcdName" -}}
{{- printf "%s-etcd" (include "epochserve.fullname" .) -}}
{{- end -}}

{{/* Secret with the etcd client certificate the operator hands to Managed clusters ("" if none). */}}
{{- define "epochserve.etcdClientSecret" -}}
{{- if .Values.etcd.enabled -}}
{{- if .Values.etcd.tls.enabled -}}{{ printf "%s-client-tls" (include "epochserve.etcdName" .) }}{{- end -}}
{{- else -}}
{{- .Values.etcd.external.tlsSecret -}}
{{- end -}}
{{- end -}}

{{/* Comma-separated host:port of every etcd member, or the external endpoints. */}}
{{- define "epochserve.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $name := include "epochserve.etcdName" . -}}
{{- $endpoints := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $endpoints = append $endpoints (printf "%s-%d.%s.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- else -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- end -}}
{{- end -}}

{{- define "epochserve.etcdScheme" -}}
{{- if .Values.etcd.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for containers that need nothing more. */}}
{{- define "epochserve.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}


{{/* The operator's namespaced rules (see operator/rbac.yaml for why each is needed). */}}
{{- define "epochserve.operatorRules" }}
- apiGroups: [epochserve.io]
  resources: [epochclusters, policyrollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [epochserve.io]
  resources: [epochclusters/status, policyrollouts/status]
  verbs: [get, patch]
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}
