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
# AnnotationsDiffBaseStorage); each pass reads one (observe.py, get_namespaced_custom_object), the
# periodic resync lists them (list_namespaced_custom_object, list_cluster_custom_object with -A).
- apiGroups: [vesuvius.dev]
  resources: [inferencejobs]
  verbs: [get, list, patch, watch]
# The status subresource: act.write_status (patch_namespaced_custom_object_status).
- apiGroups: [vesuvius.dev]
  resources: [inferencejobs/status]
  verbs: [patch]
# The child Jobs' ownerReferences set blockOwnerDeletion: with the OwnerReferencesPermissionEnforcement
# admission plugin (on by default in OpenShift) that needs update on the owner's finalizers
# (plugin/pkg/admission/gc/gc_admission.go). The operator never sets a finalizer itself.
- apiGroups: [vesuvius.dev]
  resources: [inferencejobs/finalizers]
  verbs: [update]
# Child Jobs: kopf lists and watches them, selected by label on the server (@kopf.on.event for
# batch/v1 jobs); each pass lists them by label (observe.py), creates the next stage's or a check Job
# (act.create_job), reads one after a 409 to see whose it is, and patches suspend and parallelism.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, patch, watch]
# Kueue Workloads (v1beta2, else v1beta1): a pass reads a queued Job's Workload to show Kueue's
# decisions (kueue.find) and suspends or resumes it through spec.active (kueue.patch). Harmless without Kueue.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
# Pods, read-only and selective: a small page of a stalled Job's Pending or Failed pods (by its
# controller-uid label and status.phase, with a limit), a check Job's pod, and a few running pods for
# progress (observe.py, list_namespaced_pod). Never a watch, never every pod.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Pod logs: the last lines of a few running pods (tailLines, limitBytes) for the progress columns, and a
# check Job's verdict line (observe.py, read_namespaced_pod_log). Worker pods themselves get no token.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Events: kopf posts core v1 Events for its handlers (kopf/_cogs/clients/events.py), the operator posts
# its own on the InferenceJobs (act.post_event, create_namespaced_event), and reads a stalled Job's
# FailedCreate Events (observe.py, list_namespaced_event by involvedObject.uid and reason).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- if .Values.policy.secrets.label }}
# Secrets, metadata only: the policy's label check (policy.secrets.label) of the Secret an InferenceJob
# names (policy.SecretLabels, read_namespaced_secret as PartialObjectMetadata: the data never leaves the
# API server). RBAC has no narrower verb than get; the operator can create Jobs, which could mount any
# Secret of the namespace anyway, so this widens nothing.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
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

{{/* The worker pods' ServiceAccount when an InferenceJob names none ("" = the namespace's default). */}}
{{- define "vesuvius-inference.workerServiceAccount" -}}
{{- if .Values.worker.serviceAccount.name }}
{{- .Values.worker.serviceAccount.name }}
{{- else if and .Values.worker.serviceAccount.create (not .Values.allNamespaces) }}
{{- printf "%s-worker" (include "vesuvius-inference.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The cluster admin's policy as ONE JSON document, the single source of both enforcements: the operator
reads it from VESUVIUS_POLICY (vesuvius_inference.k8s.policy.Policy.from_json) and the
ValidatingAdmissionPolicy inlines it as CEL variables (admissionpolicy.yaml).
*/}}
{{- define "vesuvius-inference.policy" -}}
{{- $account := include "vesuvius-inference.workerServiceAccount" . }}
{{- $accounts := .Values.policy.serviceAccounts.allowed | default list }}
{{- if and $account (not (has $account $accounts)) }}
{{- $accounts = append $accounts $account }}
{{- end }}
{{- $images := .Values.policy.images.allowed | default (list .Values.worker.image.repository) }}
{{- $secrets := .Values.policy.secrets.allowed | default list }}
{{- dict "images" $images "serviceAccounts" $accounts "secrets" $secrets "secretLabel" (.Values.policy.secrets.label | default "") | toJson }}
{{- end }}

{{/* Metrics readers' and the operator's metrics-auth ClusterRoles (cluster-wide names). */}}
{{- define "vesuvius-inference.metricsReader" -}}
{{- printf "%s-metrics-reader" (include "vesuvius-inference.clusterName" .) }}
{{- end }}
{{- define "vesuvius-inference.metricsAuth" -}}
{{- printf "%s-metrics-auth" (include "vesuvius-inference.clusterName" .) }}
{{- end }}
