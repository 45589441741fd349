# `tofu test` runs these for real: the module has no providers, so plan computes every output.

run "two_regions" {
  command = plan

  module {
    source = "./tests/fixture"
  }

  assert {
    condition     = jsondecode(output.derp_map_json).Regions["900"].RegionCode == "fra"
    error_message = "region 900 is keyed by its ID and keeps its code"
  }
  assert {
    condition     = length(jsondecode(output.derp_map_json).Regions) == 2
    error_message = "both regions are in the map"
  }
  assert {
    condition = jsondecode(output.derp_map_json).Regions["900"].Nodes[0] == {
      Name = "900a", RegionID = 900, HostName = "derp-0.fra.example.com", IPv4 = "203.0.113.10", IPv6 = "2001:db8::10"
    }
    error_message = "a node has exactly the fields it was given, in tailcfg names"
  }
  assert {
    condition     = !contains(keys(jsondecode(output.derp_map_json).Regions["900"]), "Avoid")
    error_message = "false booleans are left out (Go omitempty)"
  }
  assert {
    condition     = jsondecode(output.derp_map_json).Regions["901"].Avoid == true
    error_message = "avoid = true is written"
  }
  assert {
    condition = jsondecode(output.derp_map_json).Regions["901"].Nodes[0] == {
      Name = "901a", RegionID = 901, HostName = "derp-0.nyc.example.com", CertName = "derp.nyc.example.com", STUNPort = 3479, DERPPort = 8443
    }
    error_message = "ports and cert name are written"
  }
  assert {
    condition     = jsondecode(output.derp_map_json).Regions["901"].Nodes[1].STUNOnly == true
    error_message = "STUN-only node"
  }
  assert {
    condition     = !contains(keys(jsondecode(output.derp_map_json)), "omitDefaultRegions")
    error_message = "omitDefaultRegions is a policy-file field only"
  }
  assert {
    condition     = jsondecode(output.tailscale_policy_derp_map_json).omitDefaultRegions == true
    error_message = "the policy map carries omitDefaultRegions"
  }
  assert {
    condition     = strcontains(output.headscale_derp_yaml, "regions:\n  900:\n    regionid: 900\n    regioncode: \"fra\"\n")
    error_message = "YAML region keys are plain integers and field names lower case"
  }
  assert {
    condition     = strcontains(output.headscale_derp_yaml, "    nodes:\n      - name: \"900a\"\n        regionid: 900\n        hostname: \"derp-0.fra.example.com\"\n")
    error_message = "YAML nodes are a list of lower-case fields"
  }
  assert {
    condition     = output.nodes[2].url == "https://derp-0.nyc.example.com:8443/derp"
    error_message = "node URLs carry a non-default DERP port"
  }
  assert {
    condition     = output.nodes[0].url == "https://derp-0.fra.example.com/derp"
    error_message = "node URLs leave out port 443"
  }
}

run "rejects_duplicate_region_ids" {
  command = plan
  variables {
    regions = [
      { region_id = 900, region_code = "a", region_name = "A", nodes = [{ name = "900a", host_name = "a.example.com" }] },
      { region_id = 900, region_code = "b", region_name = "B", nodes = [{ name = "900b", host_name = "b.example.com" }] },
    ]
  }
  expect_failures = [var.regions]
}

run "rejects_duplicate_node_names" {
  command = plan
  variables {
    regions = [
      { region_id = 900, region_code = "a", region_name = "A", nodes = [{ name = "1a", host_name = "a.example.com" }] },
      { region_id = 901, region_code = "b", region_name = "B", nodes = [{ name = "1a", host_name = "b.example.com" }] },
    ]
  }
  expect_failures = [var.regions]
}

run "rejects_bad_addresses" {
  command = plan
  variables {
    regions = [
      { region_id = 900, region_code = "a", region_name = "A", nodes = [{ name = "900a", host_name = "a.example.com", ipv4 = "203.0.113.300" }] },
    ]
  }
  expect_failures = [var.regions]
}

run "rejects_ipv4_as_ipv6" {
  command = plan
  variables {
    regions = [
      { region_id = 900, region_code = "a", region_name = "A", nodes = [{ name = "900a", host_name = "a.example.com", ipv6 = "203.0.113.1" }] },
    ]
  }
  expect_failures = [var.regions]
}

run "rejects_bad_host_name" {
  command = plan
  variables {
    regions = [
      { region_id = 900, region_code = "a", region_name = "A", nodes = [{ name = "900a", host_name = "https://a.example.com/derp" }] },
    ]
  }
  expect_failures = [var.regions]
}

run "rejects_empty_region" {
  command = plan
  variables {
    regions = [{ region_id = 900, region_code = "a", region_name = "A", nodes = [] }]
  }
  expect_failures = [var.regions]
}

run "rejects_bad_region_code" {
  command = plan
  variables {
    regions = [{ region_id = 900, region_code = "Frankfurt 1", region_name = "A", nodes = [{ name = "900a", host_name = "a.example.com" }] }]
  }
  expect_failures = [var.regions]
}
