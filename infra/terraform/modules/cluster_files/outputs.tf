locals {
  template_vars = {
    cluster_name   = var.cluster_name
    profile        = var.profile
    port           = var.port
    data_dir       = var.data_dir
    ssh_user       = var.ssh_user
    tls            = var.tls
    chrony_servers = var.chrony_servers
    nodes          = local.nodes
  }
}

output "cluster_description" {
  description = "The cluster description (JSON) for clients, Fabric and `raftkv certs`; save it as cluster.json."
  value       = templatefile("${path.module}/templates/cluster.json.tftpl", local.template_vars)
}

output "inventory" {
  description = "The Ansible inventory (YAML) for infra/ansible/site.yml; save it next to cluster.json."
  value       = templatefile("${path.module}/templates/inventory.yml.tftpl", local.template_vars)
}
