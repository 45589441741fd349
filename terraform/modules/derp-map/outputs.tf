output "derp_map" {
  description = "The DERP map as an object in tailcfg.DERPMap shape (Regions keyed by region ID as a string)."
  value       = local.derp_map
}

output "derp_map_json" {
  description = "The DERP map as JSON (tailcfg.DERPMap): serve it for Headscale's derp.urls or save it as a file."
  value       = jsonencode(local.derp_map)
}

output "headscale_derp_yaml" {
  description = "The DERP map as YAML for Headscale's derp.paths (lower-case keys, integer region keys)."
  value       = local.derp_map_yaml
}

output "tailscale_policy_derp_map" {
  description = "The value of the \"derpMap\" key of a Tailscale policy file (adds omitDefaultRegions when set)."
  value       = local.policy_derp_map
}

output "nodes" {
  description = "Every node as {name, region_id, host_name, url}: for DNS records, monitoring and probes."
  value = flatten([
    for r in var.regions : [
      for n in r.nodes : {
        name      = n.name
        region_id = r.region_id
        host_name = n.host_name
        url       = "https://${n.host_name}${coalesce(n.derp_port, 0) != 0 ? ":${n.derp_port}" : ""}/derp"
      }
    ]
  ])
}
