output "region" {
  description = <<-EOT
    This region in the shape terraform/modules/derp-map takes as one element of `regions`:
    {region_id, region_code, region_name, nodes = [{name, host_name, ipv4, ipv6}]}. Node names
    are the chart's (<region id><letter>), so the map and the chart's NOTES agree.
  EOT
  value = {
    region_id   = var.region.id
    region_code = var.region.code
    region_name = var.region.name
    nodes = [for i, n in var.nodes : {
      name      = "${var.region.id}${substr(local.letters, i, 1)}"
      host_name = n.hostname
      ipv4      = n.ipv4
      ipv6      = n.ipv6
    }]
  }
}

output "nodes" {
  description = "Every relay as {name, host_name, pod, service}: pod and (loadBalancer mode) Service names in the namespace."
  value = [for i, n in var.nodes : {
    name      = "${var.region.id}${substr(local.letters, i, 1)}"
    host_name = n.hostname
    pod       = "${local.fullname}-${i}"
    service   = var.networking_mode == "loadBalancer" ? "${local.fullname}-${i}" : null
  }]
}

output "release" {
  description = "The Helm release: name, namespace, revision, status."
  value = {
    name      = helm_release.derper.name
    namespace = helm_release.derper.namespace
    revision  = helm_release.derper.metadata.revision
    status    = helm_release.derper.status
  }
}
