output "nodes" {
  description = "One object per node, ordered by id: id, name, zone, region, internal_ip."
  value       = local.nodes
}

output "regions" {
  description = "The distinct regions of the zones, in the order the zones name them."
  value       = local.regions
}

output "subnets" {
  description = "Region -> the subnet CIDR of that region."
  value       = tomap(local.subnets)
}

output "ports" {
  description = "The TCP ports of a node's two listeners: client and peer."
  value       = { client = var.port, peer = var.peer_port }

  precondition {
    condition     = var.port != var.peer_port
    error_message = "port and peer_port must differ: clients and peers have listeners of their own."
  }
}

output "peer_addresses" {
  description = "internal address:peer port of every node (what the other nodes dial), ordered by id."
  value       = tolist([for node in local.nodes : "${node.internal_ip}:${var.peer_port}"])
}

output "quorum" {
  description = "Nodes needed for a majority."
  value       = local.quorum
}

output "nodes_per_zone" {
  description = "Zone -> how many nodes run there."
  value       = tomap(local.nodes_per_zone)
}

output "survives_zone_outage" {
  description = "Whether a majority is left when any one zone is lost."
  value       = local.survives_zone_outage
}
