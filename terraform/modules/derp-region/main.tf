locals {
  chart = coalesce(var.chart, "${path.module}/../../../helm/derper")

  # The chart's fullname: the release name when it already contains the chart name.
  fullname = strcontains(var.release_name, "derper") ? var.release_name : "${var.release_name}-derper"

  letters = "abcdefghijklmnopqrstuvwxyz"

  module_values = {
    replicas = length(var.nodes)
    region   = var.region
    nodes = [for n in var.nodes : merge(
      { hostname = n.hostname },
      n.ipv4 != null ? { ipv4 = n.ipv4 } : {},
      n.ipv6 != null ? { ipv6 = n.ipv6 } : {},
      length(n.service_annotations) > 0 ? { serviceAnnotations = n.service_annotations } : {},
    )]
    networking = { mode = var.networking_mode }
    tls = merge(
      { mode = var.tls.mode },
      var.tls.mode == "certManager" ? { certManager = { issuerRef = { name = var.tls.issuer_name, kind = var.tls.issuer_kind, group = "cert-manager.io" } } } : {},
      var.tls.mode == "secret" ? { secret = { name = var.tls.secret_name } } : {},
    )
    image = merge({ repository = var.image.repository }, var.image.tag != null ? { tag = var.image.tag } : {})
    metrics = {
      serviceMonitor = { enabled = var.monitoring }
      prometheusRule = { enabled = var.monitoring }
      dashboard      = { enabled = var.monitoring }
    }
  }
}

resource "helm_release" "derper" {
  name             = var.release_name
  namespace        = var.namespace
  create_namespace = var.create_namespace
  chart            = local.chart
  version          = var.chart_version

  # Module values first, caller's values over them (Helm merges the documents in order).
  values = [yamlencode(local.module_values), yamlencode(var.values)]

  wait            = true
  timeout         = var.timeout_seconds
  atomic          = false
  cleanup_on_fail = false
}
