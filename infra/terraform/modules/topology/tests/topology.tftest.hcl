# `terraform test` here needs no provider and no network (see tests/infra/test_terraform.py).

variables {
  node_count   = 5
  zones        = ["europe-west1-b", "europe-west1-c", "us-east1-b"]
  name_prefix  = "raftkv"
  network_cidr = "10.42.0.0/16"
}

run "nodes_are_named_and_spread_round_robin" {
  command = plan

  assert {
    condition     = [for node in output.nodes : node.name] == ["raftkv-0", "raftkv-1", "raftkv-2", "raftkv-3", "raftkv-4"]
    error_message = "node names must be <prefix>-<id>"
  }
  assert {
    condition     = [for node in output.nodes : node.zone] == ["europe-west1-b", "europe-west1-c", "us-east1-b", "europe-west1-b", "europe-west1-c"]
    error_message = "nodes must be spread over the zones round-robin"
  }
  assert {
    condition     = output.nodes_per_zone == tomap({ "europe-west1-b" = 2, "europe-west1-c" = 2, "us-east1-b" = 1 })
    error_message = "unexpected node count per zone"
  }
}

run "one_subnet_per_region_and_addresses_inside_it" {
  command = plan

  assert {
    condition     = output.regions == tolist(["europe-west1", "us-east1"])
    error_message = "regions must be derived from the zones, in order"
  }
  assert {
    condition     = output.subnets == tomap({ "europe-west1" = "10.42.0.0/24", "us-east1" = "10.42.1.0/24" })
    error_message = "each region gets the next /24 of network_cidr"
  }
  assert {
    condition     = output.peer_addresses == tolist(["10.42.0.10:51050", "10.42.0.11:51050", "10.42.1.12:51050", "10.42.0.13:51050", "10.42.0.14:51050"])
    error_message = "node i must get host first_host_number + i of its region's subnet; peers dial the peer port"
  }
  assert {
    condition     = alltrue([for node in output.nodes : cidrhost(output.subnets[node.region], 0) == cidrhost("${node.internal_ip}/24", 0)])
    error_message = "every node's address must lie in its region's subnet"
  }
}

run "quorum_and_zone_outage" {
  command = plan

  assert {
    condition     = output.quorum == 3
    error_message = "5 nodes need 3 for a majority"
  }
  assert {
    condition     = output.survives_zone_outage
    error_message = "losing any one zone leaves at least 3 of 5 nodes"
  }
}

run "a_single_zone_cannot_survive_its_outage" {
  command = plan
  variables {
    node_count = 3
    zones      = ["europe-west1-b"]
  }
  assert {
    condition     = !output.survives_zone_outage && length(output.subnets) == 1
    error_message = "all nodes in one zone do not survive that zone's outage"
  }
}

run "an_even_node_count_is_refused" {
  command = plan
  variables {
    node_count = 4
  }
  expect_failures = [var.node_count]
}

run "a_single_node_is_refused" {
  command = plan
  variables {
    node_count = 1
  }
  expect_failures = [var.node_count]
}

run "no_zones_is_refused" {
  command = plan
  variables {
    zones = []
  }
  expect_failures = [var.zones]
}

run "a_region_is_not_a_zone" {
  command = plan
  variables {
    zones = ["europe-west1"]
  }
  expect_failures = [var.zones]
}

run "an_invalid_cidr_is_refused" {
  command = plan
  variables {
    network_cidr = "10.42.0.0/33"
  }
  expect_failures = [var.network_cidr]
}

run "clients_and_peers_have_ports_of_their_own" {
  command = plan
  variables {
    port      = 60000
    peer_port = 60001
  }
  assert {
    condition     = output.ports == { client = 60000, peer = 60001 }
    error_message = "the ports must be the ones given"
  }
  assert {
    condition     = output.peer_addresses[0] == "10.42.0.10:60001"
    error_message = "peer addresses carry the peer port"
  }
}

run "one_port_for_clients_and_peers_is_refused" {
  command = plan
  variables {
    peer_port = 50050
  }
  expect_failures = [output.ports]
}
