# Who runs where: names, zones, regions, subnets and internal addresses of the nodes.
# Everything here is pure computation, so the plan of the real deployment and the cluster
# description can be checked by `terraform test` without a cloud account.

locals {
  # "europe-west1-b" -> "europe-west1", in the order the zones list first names each region.
  zone_regions = [for zone in var.zones : regex("^(.*)-[a-z]$", zone)[0]]
  regions      = distinct(local.zone_regions)

  subnets = {
    for index, region in local.regions : region => cidrsubnet(var.network_cidr, var.subnet_newbits, index)
  }

  nodes = [
    for id in range(var.node_count) : {
      id          = id
      name        = format("%s-%d", var.name_prefix, id)
      zone        = var.zones[id % length(var.zones)]
      region      = local.zone_regions[id % length(var.zones)]
      internal_ip = cidrhost(local.subnets[local.zone_regions[id % length(var.zones)]], var.first_host_number + id)
    }
  ]

  quorum         = floor(var.node_count / 2) + 1
  nodes_per_zone = { for zone in var.zones : zone => length([for node in local.nodes : node if node.zone == zone]) }
  # A zone outage takes down that zone's nodes; the cluster keeps serving while the rest form a majority.
  survives_zone_outage = var.node_count - max(values(local.nodes_per_zone)...) >= local.quorum
}
