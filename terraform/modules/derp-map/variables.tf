variable "regions" {
  description = <<-EOT
    DERP regions and their nodes (Tailscale's tailcfg.DERPRegion / DERPNode). Node fields left
    out are left out of the map too (clients then use their defaults: DERP on 443, STUN on 3478).

    - region_id: unique ID; Tailscale's own regions use low numbers, 900-999 is the usual range
      for custom regions.
    - region_code: short unique code (lower case, digits, dashes), shown by `tailscale netcheck`.
    - avoid: clients keep a home connection here but do not pick the region as a new home.
    - no_measure_no_home: clients neither measure latency to nor home on this region.
    - nodes[].name: unique across the map, conventionally "<region_id><letter>" ("900a").
    - nodes[].host_name: public DNS name (TLS name unless cert_name is set).
    - nodes[].ipv4 / ipv6: public addresses clients may dial instead of resolving host_name;
      "none" disables that address family for the node.
    - nodes[].stun_port: 0 or absent = 3478; -1 disables STUN.
    - nodes[].derp_port: 0 or absent = 443.
  EOT
  type = list(object({
    region_id          = number
    region_code        = string
    region_name        = string
    latitude           = optional(number)
    longitude          = optional(number)
    avoid              = optional(bool, false)
    no_measure_no_home = optional(bool, false)
    nodes = list(object({
      name        = string
      host_name   = string
      cert_name   = optional(string)
      ipv4        = optional(string)
      ipv6        = optional(string)
      stun_port   = optional(number)
      stun_only   = optional(bool, false)
      derp_port   = optional(number)
      can_port_80 = optional(bool, false)
    }))
  }))

  validation {
    condition     = length(var.regions) > 0
    error_message = "regions must name at least one region."
  }
  validation {
    condition     = alltrue([for r in var.regions : r.region_id >= 1 && r.region_id <= 65535 && floor(r.region_id) == r.region_id])
    error_message = "Every region_id must be an integer from 1 to 65535."
  }
  validation {
    condition     = length(distinct([for r in var.regions : r.region_id])) == length(var.regions)
    error_message = "region_id values must be unique."
  }
  validation {
    condition     = alltrue([for r in var.regions : can(regex("^[a-z0-9][a-z0-9-]{0,31}$", r.region_code))])
    error_message = "Every region_code must be 1-32 characters of lower-case letters, digits and dashes, starting with a letter or digit."
  }
  validation {
    condition     = length(distinct([for r in var.regions : r.region_code])) == length(var.regions)
    error_message = "region_code values must be unique."
  }
  validation {
    condition     = alltrue([for r in var.regions : length(r.nodes) > 0 && length(trimspace(r.region_name)) > 0])
    error_message = "Every region needs a region_name and at least one node."
  }
  validation {
    condition = length(distinct(flatten([for r in var.regions : [for n in r.nodes : n.name]]))) == length(flatten([for r in var.regions : r.nodes]))
    # Tailscale clients key nodes by name across the whole map.
    error_message = "Node names must be unique across all regions."
  }
  validation {
    condition     = alltrue(flatten([for r in var.regions : [for n in r.nodes : can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", n.name))]]))
    error_message = "Node names must be 1-63 characters of letters, digits, '.', '_' and '-'."
  }
  validation {
    condition = alltrue(flatten([for r in var.regions : [for n in r.nodes :
      can(regex("^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$", n.host_name)) && length(n.host_name) <= 253
    ]]))
    error_message = "Every host_name must be a DNS name (labels of letters, digits and dashes)."
  }
  validation {
    condition = alltrue(flatten([for r in var.regions : [for n in r.nodes :
      n.ipv4 == null || n.ipv4 == "none" || can(regex("^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$", n.ipv4))
    ]]))
    error_message = "Every ipv4 must be a dotted-quad IPv4 address (or \"none\")."
  }
  validation {
    condition = alltrue(flatten([for r in var.regions : [for n in r.nodes :
      n.ipv6 == null || n.ipv6 == "none" || (can(cidrhost("${n.ipv6}/128", 0)) && strcontains(coalesce(n.ipv6, ""), ":"))
    ]]))
    error_message = "Every ipv6 must be an IPv6 address (or \"none\")."
  }
  validation {
    condition = alltrue(flatten([for r in var.regions : [for n in r.nodes :
      (n.stun_port == null || (n.stun_port >= -1 && n.stun_port <= 65535)) && (n.derp_port == null || (n.derp_port >= 0 && n.derp_port <= 65535))
    ]]))
    error_message = "stun_port must be -1 (disabled) to 65535, derp_port 0 to 65535."
  }
  validation {
    condition = alltrue(flatten([for r in var.regions : [for n in r.nodes :
      !(n.stun_only && n.stun_port == -1)
    ]]))
    error_message = "A stun_only node cannot also disable STUN (stun_port = -1)."
  }
}

variable "omit_default_regions" {
  description = "Tailscale policy only: clients drop Tailscale's own DERP regions and use only these."
  type        = bool
  default     = false
}
