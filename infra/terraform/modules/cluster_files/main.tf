# The cluster id travels in every peer message; a node refuses messages of another cluster.
# Unless one is given it is made once, at the first apply, and kept in the state
# (ignore_changes): a cluster destroyed and created again gets a new one, so a stray node of the
# old cluster cannot take part in the new. terraform_data is built in: no provider to download.
resource "terraform_data" "cluster_id" {
  count = var.cluster_id == null ? 1 : 0

  input = "${var.cluster_name}-${substr(replace(uuid(), "-", ""), 0, 8)}"

  lifecycle {
    ignore_changes = [input]
  }
}

locals {
  cluster_id = var.cluster_id != null ? var.cluster_id : terraform_data.cluster_id[0].output
  nodes = [for node in var.nodes : merge(node, {
    client_ip = var.client_network == "external" ? node.external_ip : node.internal_ip
  })]
}
