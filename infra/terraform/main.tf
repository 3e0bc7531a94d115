# A raftkv cluster on Google Compute Engine: one VPC, a subnet per region, firewall rules that
# open the peer port only to the cluster's own VMs, the client port to client_cidrs (and, for the
# readiness probe, to the cluster's VMs) and SSH only to admin_cidrs, and node_count Debian 12
# VMs spread over the zones.
#
# Names, zones, subnets and internal addresses come from the provider-free modules/topology;
# the cluster description and the Ansible inventory from modules/cluster_files. Both are
# covered by `terraform test` without a cloud account.

provider "google" {
  project = var.project_id
  region  = module.topology.regions[0]
}

module "topology" {
  source = "./modules/topology"

  node_count   = var.node_count
  zones        = var.zones
  name_prefix  = var.name_prefix
  network_cidr = var.network_cidr
  port         = var.raftkv_port
  peer_port    = var.raftkv_peer_port
}

locals {
  node_tag = "${var.name_prefix}-node"
  nodes    = { for node in module.topology.nodes : node.name => node }
  labels   = merge(var.labels, { "app" = "raftkv", "raftkv-cluster" = var.name_prefix })
}

resource "google_compute_network" "raftkv" {
  name                    = "${var.name_prefix}-net"
  description             = "raftkv cluster network"
  auto_create_subnetworks = false
  routing_mode            = "GLOBAL"
}

resource "google_compute_subnetwork" "raftkv" {
  for_each = module.topology.subnets

  name                     = "${var.name_prefix}-${each.key}"
  region                   = each.key
  network                  = google_compute_network.raftkv.id
  ip_cidr_range            = each.value
  private_ip_google_access = true
}

# From the cluster's own VMs only (the source is the node tag, not an address range, so no other
# VM in the subnets reaches these): the peer port (Raft, mutual TLS), and the client port, where
# the role's readiness probe on each node asks every node's Status before and after a rolling
# restart (presenting the node's certificate when client_cert_auth is on). Nothing else inside
# the network is open.
resource "google_compute_firewall" "peers" {
  name        = "${var.name_prefix}-allow-peers"
  network     = google_compute_network.raftkv.name
  direction   = "INGRESS"
  source_tags = [local.node_tag]
  target_tags = [local.node_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(module.topology.ports.peer), tostring(module.topology.ports.client)]
  }
  allow {
    protocol = "icmp"
  }
}

# Clients reach the client port only; the peer port stays closed to them.
resource "google_compute_firewall" "clients" {
  count = length(var.client_cidrs) > 0 ? 1 : 0

  name          = "${var.name_prefix}-allow-clients"
  network       = google_compute_network.raftkv.name
  direction     = "INGRESS"
  source_ranges = var.client_cidrs
  target_tags   = [local.node_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(module.topology.ports.client)]
  }
}

resource "google_compute_firewall" "ssh" {
  name          = "${var.name_prefix}-allow-ssh"
  network       = google_compute_network.raftkv.name
  direction     = "INGRESS"
  source_ranges = var.admin_cidrs
  target_tags   = [local.node_tag]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

resource "google_compute_instance" "node" {
  for_each = local.nodes

  name         = each.key
  machine_type = var.machine_type
  zone         = each.value.zone
  tags         = [local.node_tag]
  labels       = merge(local.labels, { "raftkv-node-id" = tostring(each.value.id) })

  boot_disk {
    initialize_params {
      image = var.image
      size  = var.boot_disk_size_gb
      type  = var.boot_disk_type
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.raftkv[each.value.region].id
    network_ip = each.value.internal_ip

    # An ephemeral external address for SSH from admin_cidrs and clients from client_cidrs.
    access_config {}
  }

  metadata = {
    "ssh-keys"               = "${var.ssh_user}:${trimspace(var.ssh_public_key)}"
    "enable-oslogin"         = "FALSE"
    "block-project-ssh-keys" = "TRUE"
  }

  scheduling {
    preemptible                 = var.spot
    automatic_restart           = !var.spot
    on_host_maintenance         = var.spot ? "TERMINATE" : "MIGRATE"
    provisioning_model          = var.spot ? "SPOT" : "STANDARD"
    instance_termination_action = var.spot ? "STOP" : null
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  allow_stopping_for_update = true
}

module "cluster_files" {
  source = "./modules/cluster_files"

  cluster_name     = var.name_prefix
  port             = module.topology.ports.client
  peer_port        = module.topology.ports.peer
  data_dir         = var.data_dir
  profile          = var.profile
  ssh_user         = var.ssh_user
  tls              = var.tls
  client_cert_auth = var.client_cert_auth
  chrony_servers   = ["metadata.google.internal"]
  nodes = [for node in module.topology.nodes : {
    id          = node.id
    name        = node.name
    zone        = node.zone
    internal_ip = google_compute_instance.node[node.name].network_interface[0].network_ip
    external_ip = google_compute_instance.node[node.name].network_interface[0].access_config[0].nat_ip
  }]
}
