# Runs against a copy of infra/terraform/variables.tf alone (no provider, no resources), so the
# root module's validation rules are exercised without the google provider.
# See tests/infra/test_terraform.py.

variables {
  project_id     = "raftkv-test-1"
  admin_cidrs    = ["203.0.113.7/32"]
  ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+test test@example"
}

run "the_defaults_are_valid" {
  command = plan
}

run "a_geo_distributed_five_node_cluster_is_valid" {
  command = plan
  variables {
    node_count   = 5
    zones        = ["europe-west1-b", "us-east1-b", "asia-northeast1-a"]
    client_cidrs = ["198.51.100.0/24"]
  }
}

run "ports_of_ones_own_choosing_are_valid" {
  command = plan
  variables {
    raftkv_port      = 7000
    raftkv_peer_port = 7001
    client_cert_auth = false
  }
}

run "an_even_node_count_is_refused" {
  command = plan
  variables {
    node_count = 4
  }
  expect_failures = [var.node_count]
}

run "one_node_is_refused" {
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

run "a_peer_port_out_of_range_is_refused" {
  command = plan
  variables {
    raftkv_peer_port = 80
  }
  expect_failures = [var.raftkv_peer_port]
}

run "a_bad_client_cidr_is_refused" {
  command = plan
  variables {
    client_cidrs = ["10.0.0.0/33"]
  }
  expect_failures = [var.client_cidrs]
}

run "ssh_from_everywhere_is_refused" {
  command = plan
  variables {
    admin_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.admin_cidrs]
}

run "no_admin_range_is_refused" {
  command = plan
  variables {
    admin_cidrs = []
  }
  expect_failures = [var.admin_cidrs]
}

run "a_bad_project_id_is_refused" {
  command = plan
  variables {
    project_id = "My Project"
  }
  expect_failures = [var.project_id]
}

run "a_bad_ssh_key_is_refused" {
  command = plan
  variables {
    ssh_public_key = "not a key"
  }
  expect_failures = [var.ssh_public_key]
}

run "root_is_not_the_ssh_user" {
  command = plan
  variables {
    ssh_user = "root"
  }
  expect_failures = [var.ssh_user]
}

run "a_non_debian_image_is_refused" {
  command = plan
  variables {
    image = "ubuntu-os-cloud/ubuntu-2404-lts"
  }
  expect_failures = [var.image]
}
