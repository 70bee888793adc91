{{/* Chart name, possibly overridden. */}}
{{- define "vesuvius-inference.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "vesuvius-inference.fullname" -}}
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

{{/* ClusterRole / ClusterRoleBinding name: cluster-wide, so it carries the release namespace. */}}
{{- define "vesuvius-inference.clusterName" -}}
{{- printf "%s-%s" (include "vesuvius-inference.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "vesuvius-inference.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vesuvius-inference.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "vesuvius-inference.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vesuvius-inference.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vesuvius-inference.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vesuvius-inference.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "vesuvius-inference.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Default worker image of the child Jobs, the tag defaulting to the chart's appVersion. */}}
{{- define "vesuvius-inference.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* The watched namespaces, one per line (the release namespace when none is given). */}}
{{- define "vesuvius-inference.watchNamespaces" -}}
{{- if .Values.allNamespaces }}
{{- if .Values.watchNamespaces }}
{{- fail "allNamespaces=true serves every namespace: leave watchNamespaces empty" }}
{{- end }}
{{- else }}
{{- range (default (list .Release.Namespace) .Values.watchNamespaces) }}
{{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs on namespaced resources: a Role in each watched namespace, or the
ClusterRole in all-namespaces mode. Each rule says who needs it; tests/helm/test_rbac.py derives the
same set from the operator's code and kopf's handler registry and checks that nothing is missing or extra.
*/}}
{{- define "vesuvius-inference.namespacedRules" -}}
# InferenceJobs: kopf lists and watches them (its watch streams for @kopf.on.create/resume/update)
# and patches them (progress and diff-base annotations, AnnotationsProgressStorage /
# AnnotationsDiffBaseStorage); handlers.reconcile gets one (get_namespaced_custom_object), the
# periodic resync lists them (list_namespaced_custom_object, list_cluster_custom_object with -A).
- apiGroups: [vesuvius.dev]
  resources: [inferencejobs]
  verbs: [get, list, patch, watch]
# The status subresource: handlers._write_status (patch_namespaced_custom_object_status).
- apiGroups: [vesuvius.dev]
  resources: [inferencejobs/status]
  verbs: [patch]
# The child Jobs' ownerReferences set blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement
# admission plugin (on by default in OpenShift) that needs update on the owner's finalizers
# (plugin/pkg/admission/gc/gc_admission.go). The operator never sets a finalizer itself.
- apiGroups: [vesuvius.dev]
  resources: [inferencejobs/finalizers]
  verbs: [update]
# Child Jobs: kopf lists and watches them (@kopf.on.event for batch/v1 jobs); handlers list
# (child_jobs), create (_create), read one after a 409 to see whose it is, and patch them
# (suspend, parallelism).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, patch, watch]
# Kueue Workloads: with a queue, handlers._sync_suspend suspends and resumes a Job through its
# Workload's spec.active (Kueue restarts admitted Jobs suspended any other way). Harmless without Kueue.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
# Pods, read-only: handlers._failure_details lists a failed Job's pods for the termination messages,
# handlers._stuck the pods of unfinished Jobs that cannot start (CreateContainerConfigError, ...).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Events: kopf posts core v1 Events (kopf/_cogs/clients/events.py: POST .../namespaces/NS/events)
# for kopf.info/kopf.warn and handler outcomes, and handlers._event posts them from the periodic
# resync (create_namespaced_event). Neither uses events.k8s.io.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Cluster-scoped reads of kopf's runtime observation (kopf/_core/reactor/observation.py). */}}
{{- define "vesuvius-inference.discoveryRules" -}}
# CRDs: kopf's resource observer watches them to notice resources appearing or changing at runtime.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if not .Values.allNamespaces }}
# Namespaces: kopf's namespace observer lists and watches them, but only when it serves named
# namespaces (in --all-namespaces mode it does not look at namespaces at all).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
