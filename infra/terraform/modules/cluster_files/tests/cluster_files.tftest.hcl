# `terraform test` here needs no provider and no network (see tests/infra/test_terraform.py):
# plan runs, and apply runs of terraform_data (built in) for the generated cluster id.

variables {
  cluster_name = "geo"
  cluster_id   = "geo-test"
  port         = 50050
  peer_port    = 51050
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
    error_message = "clients outside the VPC dial the external addresses, on the client port"
  }
  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.peer_address] == ["10.42.0.10:51050", "10.42.1.11:51050", "10.42.0.12:51050"]
    error_message = "peers dial the internal addresses, on the peer port"
  }
  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.host] == ["deploy@34.1.1.1", "deploy@34.1.1.2", "deploy@34.1.1.3"]
    error_message = "Fabric reaches user@external address"
  }
  assert {
    condition     = jsondecode(output.cluster_description).profile == "seed" && jsondecode(output.cluster_description).cluster_id == "geo-test"
    error_message = "profile and cluster id must be recorded"
  }
  assert {
    condition     = jsondecode(output.cluster_description).tls == { ca = "tls/ca.pem", cert = "tls/client-ops.pem", key = "tls/client-ops.key" }
    error_message = "clients verify the nodes with the CA and present the operator's certificate (client-cert-auth is on by default)"
  }
}

run "without_client_cert_auth_clients_only_verify_the_nodes" {
  command = plan
  variables {
    client_cert_auth = false
  }
  assert {
    condition     = jsondecode(output.cluster_description).tls == { ca = "tls/ca.pem" }
    error_message = "no client certificate without client-cert-auth"
  }
  assert {
    condition     = strcontains(output.inventory, "raftkv_tls_enabled: true\n") && strcontains(output.inventory, "raftkv_client_cert_auth: false\n")
    error_message = "the inventory carries both switches"
  }
}

run "clients_inside_the_vpc_dial_internal_addresses" {
  command = plan
  variables {
    client_network   = "internal"
    tls              = false
    client_cert_auth = false
  }
  assert {
    condition     = [for node in jsondecode(output.cluster_description).nodes : node.address] == ["10.42.0.10:50050", "10.42.1.11:50050", "10.42.0.12:50050"]
    error_message = "with client_network = internal, address is the internal one"
  }
  assert {
    condition     = jsondecode(output.cluster_description).tls == {}
    error_message = "no CA without TLS on the client listener"
  }
}

run "client_cert_auth_without_tls_is_refused" {
  command = plan
  variables {
    tls = false
  }
  expect_failures = [output.cluster_description]
}

run "one_port_for_clients_and_peers_is_refused" {
  command = plan
  variables {
    peer_port = 50050
  }
  expect_failures = [output.cluster_description]
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
  assert {
    condition     = strcontains(output.inventory, "raftkv_port: 50050\n        raftkv_peer_port: 51050\n")
    error_message = "group vars carry both ports"
  }
  assert {
    condition     = strcontains(output.inventory, "raftkv_cluster_id: \"geo-test\"\n") && strcontains(output.inventory, "raftkv_client_cert_auth: true\n        raftkv_client_cert_names: [\"ops\"]\n")
    error_message = "group vars carry the cluster id and the client certificate to make"
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

run "a_cluster_id_is_made_at_the_first_apply" {
  command = apply
  variables {
    cluster_id = null
  }
  assert {
    condition     = can(regex("^geo-[0-9a-f]{8}$", output.cluster_id))
    error_message = "the generated id is <cluster_name>-<8 hex digits>"
  }
  assert {
    condition     = jsondecode(output.cluster_description).cluster_id == output.cluster_id && strcontains(output.inventory, "raftkv_cluster_id: \"${output.cluster_id}\"\n")
    error_message = "both files carry the generated id"
  }
}

run "the_generated_cluster_id_is_kept_by_later_applies" {
  command = apply
  variables {
    cluster_id = null
  }
  assert {
    condition     = output.cluster_id == run.a_cluster_id_is_made_at_the_first_apply.cluster_id
    error_message = "a later apply must keep the id (lifecycle ignore_changes)"
  }
}
