{{/* Names and labels shared by every template. */}}
{{- define "mcp-sidecar.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-sidecar.selectorLabels" -}}
app.kubernetes.io/name: mcp-server
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mcp-sidecar.labels" -}}
{{ include "mcp-sidecar.selectorLabels" . }}
app.kubernetes.io/part-of: mcp-sidecar
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "mcp-sidecar.secretName" -}}
{{- if .Values.secrets.create -}}{{ include "mcp-sidecar.name" . }}{{- else -}}{{ required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret }}{{- end -}}
{{- end -}}

{{/* The MCP server's probe command. */}}
{{- define "mcp-sidecar.probeCommand" -}}
{{- if .Values.mcpServer.probeCommand -}}
{{ toYaml .Values.mcpServer.probeCommand }}
{{- else -}}
- python
- -c
- import socket; socket.create_connection(("127.0.0.1", {{ .Values.mcpServer.port }}), timeout=2).close()
{{- end -}}
{{- end -}}

{{/* The sidecar configuration file (the sidecar expands ${VAR} from its environment). */}}
{{- define "mcp-sidecar.config" -}}
{{- $r := .Values.redis -}}
{{- $redis := dict "url" "${REDIS_URL}" "mode" $r.mode "connect_timeout" $r.connectTimeout "command_timeout" $r.commandTimeout -}}
{{- with $r.nodes }}{{ $_ := set $redis "nodes" . }}{{ end -}}
{{- with $r.serviceName }}{{ $_ := set $redis "service_name" . }}{{ end -}}
{{- with $r.username }}{{ $_ := set $redis "username" . }}{{ end -}}
{{- if $r.password.existingSecret }}{{ $_ := set $redis "password_file" (printf "/var/run/secrets/redis-password/%s" $r.password.key) }}{{ end -}}
{{- if $r.tls.existingSecret -}}
{{- $tls := dict "ca_file" (printf "/var/run/secrets/redis-tls/%s" $r.tls.caKey) -}}
{{- if $r.tls.clientCertificate -}}
{{- $_ := set $tls "cert_file" (printf "/var/run/secrets/redis-tls/%s" $r.tls.certKey) -}}
{{- $_ := set $tls "key_file" (printf "/var/run/secrets/redis-tls/%s" $r.tls.keyKey) -}}
{{- end -}}
{{- $_ := set $redis "tls" $tls -}}
{{- end -}}
{{- $route := merge (dict "prefix" .Values.sidecar.routePrefix "upstream" (printf "http://127.0.0.1:%v%s" .Values.mcpServer.port .Values.mcpServer.path) "server_name" .Values.mcpServer.serverName) .Values.sidecar.route -}}
{{- $auth := dict -}}
{{- if include "mcp-sidecar.tokenEncryption" . }}{{ $_ := set $auth "token_encryption_key" "${TOKEN_ENCRYPTION_KEY}" }}{{ end -}}
{{- $base := dict
  "server" (dict "listen" "0.0.0.0:8080" "admin_listen" "0.0.0.0:9090" "peer_listen" "0.0.0.0:8081" "advertise_address" "${POD_IP}:8081" "threads" .Values.sidecar.threads "grace_period" "5s" "shutdown_timeout" "15s" "pid_file" "/tmp/mcp-sidecar.pid" "upgrade_sock" "/tmp/mcp-sidecar-upgrade.sock")
  "redis" $redis
  "peer" (dict "secret" "${PEER_SECRET}")
  "admin" (dict "token" "${ADMIN_TOKEN}")
  "routes" (list $route) -}}
{{- if $auth }}{{ $_ := set $base "auth" $auth }}{{ end -}}
{{- toYaml (mergeOverwrite $base (deepCopy .Values.sidecar.config)) -}}
{{- end -}}

{{/* Non-empty when the Secret holds TOKEN_ENCRYPTION_KEY. */}}
{{- define "mcp-sidecar.tokenEncryption" -}}
{{- if or (and .Values.secrets.create .Values.secrets.values.tokenEncryptionKey) (and (not .Values.secrets.create) .Values.secrets.hasTokenEncryptionKey) -}}yes{{- end -}}
{{- end -}}
