output "node_ids" {
  description = "Node ids, in order."
  value       = [for node in module.topology.nodes : node.id]
}

output "node_names" {
  description = "VM names, ordered by node id."
  value       = [for node in module.topology.nodes : node.name]
}

output "zones" {
  description = "Zone of each node, ordered by node id."
  value       = [for node in module.topology.nodes : node.zone]
}

output "ports" {
  description = "A node's two TCP ports: client (open to client_cidrs) and peer (the cluster's VMs only)."
  value       = module.topology.ports
}

output "cluster_id" {
  description = "The cluster id every peer message carries (made at the first apply, kept in the state)."
  value       = module.cluster_files.cluster_id
}

output "internal_addresses" {
  description = "Internal IPv4 address of each node (what peers dial, on the peer port), ordered by node id."
  value       = [for node in module.topology.nodes : google_compute_instance.node[node.name].network_interface[0].network_ip]
}

output "external_addresses" {
  description = "External IPv4 address of each node (SSH, and clients in client_cidrs), ordered by node id."
  value       = [for node in module.topology.nodes : google_compute_instance.node[node.name].network_interface[0].access_config[0].nat_ip]
}

output "survives_zone_outage" {
  description = "Whether a majority of nodes is left when any one zone fails."
  value       = module.topology.survives_zone_outage
}

output "cluster_description" {
  description = "The cluster description JSON (infra/deploy.py saves it as cluster/gcp/cluster.json)."
  value       = module.cluster_files.cluster_description
}

output "inventory" {
  description = "The Ansible inventory YAML (infra/deploy.py saves it as cluster/gcp/inventory.yml)."
  value       = module.cluster_files.inventory
}
