# A raftkv cluster on Google Compute Engine: one VPC, a subnet per region, firewall rules that
# open the raftkv port only inside the cluster (and to client_cidrs) and SSH only to
# admin_cidrs, and node_count Debian 12 VMs spread over the zones.
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

# Peers talk to each other on the raftkv port; nothing else inside the network is open.
resource "google_compute_firewall" "peers" {
  name          = "${var.name_prefix}-allow-peers"
  network       = google_compute_network.raftkv.name
  direction     = "INGRESS"
  source_ranges = values(module.topology.subnets)
  target_tags   = [local.node_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.raftkv_port)]
  }
  allow {
    protocol = "icmp"
  }
}

resource "google_compute_firewall" "clients" {
  count = length(var.client_cidrs) > 0 ? 1 : 0

  name          = "${var.name_prefix}-allow-clients"
  network       = google_compute_network.raftkv.name
  direction     = "INGRESS"
  source_ranges = var.client_cidrs
  target_tags   = [local.node_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.raftkv_port)]
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

  cluster_name   = var.name_prefix
  port           = var.raftkv_port
  data_dir       = var.data_dir
  profile        = var.profile
  ssh_user       = var.ssh_user
  tls            = var.tls
  chrony_servers = ["metadata.google.internal"]
  nodes = [for node in module.topology.nodes : {
    id          = node.id
    name        = node.name
    zone        = node.zone
    internal_ip = google_compute_instance.node[node.name].network_interface[0].network_ip
    external_ip = google_compute_instance.node[node.name].network_interface[0].access_config[0].nat_ip
  }]
}
