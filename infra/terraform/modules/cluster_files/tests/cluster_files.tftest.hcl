# `terraform test` here needs no provider and no network (see tests/infra/test_terraform.py).

variables {
  cluster_name = "geo"
  port         = 50050
  data_dir     = "/var/lib/raftkv"
  profile      = "seed"
  ssh_user     = "deploy"
  nodes = [
    { id = 0, name = "raftkv-0", zone = "europe-west1-b", internal_ip = "10.42.0.10", external_ip = "34.1.1.1" },
    { id = 1, name = "raftkv-1", zone = "us-east1-b", internal_ip = "10.42.1.11", external_ip = "34.1.1.2" },
    { id = 2, name = "raftkv-2", zone = "europe-west1-c", internal_ip = "10.42.0.12", external_ip = "34.1.1.3" },
  ]
}

run "the_description_lists_every_node_with_both_addresses" {
  command = plan

  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.address] == ["34.1.1.1:50050", "34.1.1.2:50050", "34.1.1.3:50050"]
    error_message = "clients outside the VPC dial the external addresses"
  }
  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.peer_address] == ["10.42.0.10:50050", "10.42.1.11:50050", "10.42.0.12:50050"]
    error_message = "peers dial the internal addresses"
  }
  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.host] == ["deploy@34.1.1.1", "deploy@34.1.1.2", "deploy@34.1.1.3"]
    error_message = "Fabric reaches user@external address"
  }
  assert {
    condition     = jsondecode(output.cluster_description).tls == { ca = "tls/ca.pem" } && jsondecode(output.cluster_description).profile == "seed"
    error_message = "TLS CA path and profile must be recorded"
  }
}

run "clients_inside_the_vpc_dial_internal_addresses" {
  command = plan
  variables {
    client_network = "internal"
    tls            = false
  }
  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.address] == ["10.42.0.10:50050", "10.42.1.11:50050", "10.42.0.12:50050"]
    error_message = "with client_network = internal, address is the internal one"
  }
  assert {
    condition     = jsondecode(output.cluster_description).tls == {}
    error_message = "no CA without TLS"
  }
}

run "the_inventory_names_every_host" {
  command = plan
  assert {
    condition     = strcontains(output.inventory, "raftkv-1:\n          ansible_host: 34.1.1.2\n          raftkv_node_id: 1\n          raftkv_internal_ip: 10.42.1.11\n")
    error_message = "each host carries its address, id and internal address"
  }
  assert {
    condition     = strcontains(output.inventory, "ansible_user: deploy\n") && strcontains(output.inventory, "raftkv_tls_enabled: true\n")
    error_message = "group vars carry the ssh user and TLS switch"
  }
}

run "given_ntp_servers_replace_the_pools" {
  command = plan
  variables {
    chrony_servers = ["metadata.google.internal"]
  }
  assert {
    condition     = strcontains(output.inventory, "raftkv_chrony_servers: [\"metadata.google.internal\"]\n") && strcontains(output.inventory, "raftkv_chrony_pools: []\n")
    error_message = "with NTP servers given, the role's default pools are turned off"
  }
}

run "duplicate_ids_are_refused" {
  command = plan
  variables {
    nodes = [
      { id = 0, name = "a", zone = "z", internal_ip = "10.0.0.1", external_ip = "10.0.0.1" },
      { id = 0, name = "b", zone = "z", internal_ip = "10.0.0.2", external_ip = "10.0.0.2" },
    ]
  }
  expect_failures = [var.nodes]
}

run "a_relative_data_dir_is_refused" {
  command = plan
  variables {
    data_dir = "data"
  }
  expect_failures = [var.data_dir]
}
