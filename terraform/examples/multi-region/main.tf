# Two regions, each in its own cluster, and the DERP map for Headscale and Tailscale policy.
#
#   tofu init && tofu apply
#   tofu output -raw derp_map_json > derp.json          # Headscale derp.urls (serve it) or policy
#   tofu output -raw headscale_derp_yaml > derp.yaml    # Headscale derp.paths

terraform {
  required_version = ">= 1.8.0"
  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = ">= 3.0.0, < 4.0.0"
    }
  }
}

variable "kubeconfig" {
  description = "kubeconfig holding one context per region's cluster."
  type        = string
  default     = "~/.kube/config"
}

provider "helm" {
  alias = "fra"
  kubernetes = {
    config_path    = var.kubeconfig
    config_context = "fra"
  }
}

provider "helm" {
  alias = "nyc"
  kubernetes = {
    config_path    = var.kubeconfig
    config_context = "nyc"
  }
}

module "fra" {
  source    = "../../modules/derp-region"
  providers = { helm = helm.fra }

  region = { id = 900, code = "fra", name = "Frankfurt" }
  nodes = [
    { hostname = "derp-0.fra.example.com", ipv4 = "203.0.113.10" },
    { hostname = "derp-1.fra.example.com", ipv4 = "203.0.113.11" },
  ]
  tls        = { mode = "certManager", issuer_name = "letsencrypt" }
  monitoring = true
}

module "nyc" {
  source    = "../../modules/derp-region"
  providers = { helm = helm.nyc }

  # One node with a certificate from Let's Encrypt (derper's own ACME client, cache on the PVC).
  # A region of several ACME nodes needs a name shared by all their certificates for the mesh
  # (chart value mesh.peerTlsName); certManager issues one certificate for all names instead.
  region = { id = 901, code = "nyc", name = "New York" }
  nodes  = [{ hostname = "derp-0.nyc.example.com", ipv6 = "2001:db8:901::10" }]
  tls    = { mode = "acme" }
  values = {
    networking = { ipFamilyPolicy = "RequireDualStack", ipFamilies = ["IPv4", "IPv6"] }
  }
}

module "derp_map" {
  source = "../../modules/derp-map"

  regions = [module.fra.region, module.nyc.region]
}

output "derp_map_json" {
  description = "tailcfg.DERPMap JSON for Headscale derp.urls or a Tailscale policy's derpMap."
  value       = module.derp_map.derp_map_json
}

output "headscale_derp_yaml" {
  description = "YAML for Headscale derp.paths."
  value       = module.derp_map.headscale_derp_yaml
}

output "nodes" {
  description = "Every relay: name, host name, pod and Service, per region."
  value       = { fra = module.fra.nodes, nyc = module.nyc.nodes }
}
