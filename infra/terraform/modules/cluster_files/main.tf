locals {
  nodes = [for node in var.nodes : merge(node, {
    client_ip = var.client_network == "external" ? node.external_ip : node.internal_ip
  })]
}
