locals {
  template_vars = {
    cluster_name     = var.cluster_name
    cluster_id       = local.cluster_id
    profile          = var.profile
    port             = var.port
    peer_port        = var.peer_port
    data_dir         = var.data_dir
    ssh_user         = var.ssh_user
    tls              = var.tls
    client_cert_auth = var.client_cert_auth
    client_cert_name = var.client_cert_name
    chrony_servers   = var.chrony_servers
    nodes            = local.nodes
  }
}

output "cluster_id" {
  description = "The cluster id in both files (given, or made at the first apply)."
  value       = local.cluster_id
}

output "cluster_description" {
  description = "The cluster description (JSON) for clients, Fabric and `raftkv certs`; save it as cluster.json."
  value       = templatefile("${path.module}/templates/cluster.json.tftpl", local.template_vars)

  precondition {
    condition     = var.tls || !var.client_cert_auth
    error_message = "client_cert_auth needs tls: a client certificate is presented over TLS."
  }
  precondition {
    condition     = var.port != var.peer_port
    error_message = "port and peer_port must differ: clients and peers have listeners of their own."
  }
}

output "inventory" {
  description = "The Ansible inventory (YAML) for infra/ansible/site.yml; save it next to cluster.json."
  value       = templatefile("${path.module}/templates/inventory.yml.tftpl", local.template_vars)
}
