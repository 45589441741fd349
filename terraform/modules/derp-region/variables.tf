variable "release_name" {
  description = "Helm release name; pods are <release_name>-derper-<ordinal> unless it contains \"derper\"."
  type        = string
  default     = "derper"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$", var.release_name))
    error_message = "release_name must be a DNS label of at most 40 characters."
  }
}

variable "namespace" {
  description = "Namespace of the release (created when create_namespace is true)."
  type        = string
  default     = "derp"
  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS label."
  }
}

variable "create_namespace" {
  description = "Create the namespace if it does not exist."
  type        = bool
  default     = true
}

variable "chart" {
  description = "Chart location: a path to helm/derper (default: this repository's) or a chart reference."
  type        = string
  default     = null
}

variable "chart_version" {
  description = "Chart version when `chart` names a repository chart; ignored for a path."
  type        = string
  default     = null
}

variable "region" {
  description = "The DERP region this cluster serves: id (unique in the map), code, name."
  type = object({
    id   = number
    code = string
    name = string
  })
  validation {
    condition     = var.region.id >= 1 && var.region.id <= 65535 && floor(var.region.id) == var.region.id
    error_message = "region.id must be an integer from 1 to 65535."
  }
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,15}$", var.region.code))
    error_message = "region.code must be 1-16 lower-case letters, digits and dashes."
  }
}

variable "nodes" {
  description = <<-EOT
    One entry per relay (StatefulSet replica), in ordinal order: hostname (public DNS name),
    optional ipv4/ipv6 (published in the DERP map; with a LoadBalancer, request these addresses
    through service_annotations your cloud understands).
  EOT
  type = list(object({
    hostname            = string
    ipv4                = optional(string)
    ipv6                = optional(string)
    service_annotations = optional(map(string), {})
  }))
  validation {
    condition     = length(var.nodes) >= 1 && length(var.nodes) <= 26
    error_message = "nodes must have 1 to 26 entries (node names are <region id><letter>)."
  }
  validation {
    condition     = length(distinct([for n in var.nodes : n.hostname])) == length(var.nodes)
    error_message = "Node hostnames must be unique."
  }
}

variable "networking_mode" {
  description = "loadBalancer (a LoadBalancer Service per relay) or hostNetwork."
  type        = string
  default     = "loadBalancer"
  validation {
    condition     = contains(["loadBalancer", "hostNetwork"], var.networking_mode)
    error_message = "networking_mode must be loadBalancer or hostNetwork."
  }
}

variable "tls" {
  description = "TLS: mode acme, certManager (issuer_name/issuer_kind) or secret (secret_name)."
  type = object({
    mode        = string
    issuer_name = optional(string, "letsencrypt")
    issuer_kind = optional(string, "ClusterIssuer")
    secret_name = optional(string, "")
  })
  default = { mode = "certManager" }
  validation {
    condition     = contains(["acme", "certManager", "secret"], var.tls.mode)
    error_message = "tls.mode must be acme, certManager or secret."
  }
  validation {
    condition     = var.tls.mode != "secret" || length(var.tls.secret_name) > 0
    error_message = "tls.mode = secret needs tls.secret_name."
  }
}

variable "image" {
  description = "Relay image repository and tag (tag null: the chart's appVersion)."
  type = object({
    repository = string
    tag        = optional(string)
  })
  default = { repository = "ghcr.io/example/derp-fleet" }
}

variable "monitoring" {
  description = "Create the ServiceMonitor, PrometheusRule and Grafana dashboard ConfigMap (needs prometheus-operator's CRDs)."
  type        = bool
  default     = false
}

variable "values" {
  description = "Further chart values (values.yaml keys), merged over what the module sets."
  type        = any
  default     = {}
}

variable "timeout_seconds" {
  description = "How long Helm waits for the release to become ready."
  type        = number
  default     = 600
}
