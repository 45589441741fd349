terraform {
  required_version = ">= 1.8.0"
  required_providers {
    # Configured by the caller (one provider per cluster; see examples/multi-region).
    helm = {
      source  = "hashicorp/helm"
      version = ">= 3.0.0, < 4.0.0"
    }
  }
}
