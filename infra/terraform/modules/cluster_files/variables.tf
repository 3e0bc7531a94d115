variable "cluster_name" {
  type        = string
  description = "Name of the cluster, written into the cluster description."
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", var.cluster_name))
    error_message = "cluster_name must be 1-100 letters, digits, dots, dashes or underscores."
  }
}

variable "cluster_id" {
  type        = string
  description = "The cluster id every peer message carries (raftkv refuses another cluster's). null: <cluster_name>-<8 random hex digits>, made at the first apply and kept."
  default     = null
  validation {
    condition     = var.cluster_id == null || can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", var.cluster_id))
    error_message = "cluster_id must be 1-128 letters, digits, dots, dashes or underscores."
  }
}

variable "nodes" {
  type = list(object({
    id          = number
    name        = string
    zone        = string
    internal_ip = string
    external_ip = string
  }))
  description = "Every node: id, name, zone, the internal address peers use and the external address the operator reaches (the same address where there is no NAT)."
  validation {
    condition     = length(var.nodes) >= 1 && length(distinct([for node in var.nodes : node.id])) == length(var.nodes)
    error_message = "nodes must be non-empty with distinct ids."
  }
  validation {
    condition     = alltrue([for node in var.nodes : can(cidrhost("${node.internal_ip}/32", 0)) && can(cidrhost("${node.external_ip}/32", 0))])
    error_message = "internal_ip and external_ip must be IPv4 addresses."
  }
}

variable "port" {
  type        = number
  description = "TCP port each node serves clients on (`address` in the description)."
  validation {
    condition     = var.port >= 1 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number between 1 and 65535."
  }
}

variable "peer_port" {
  type        = number
  description = "TCP port each node serves the other nodes on, over mutual TLS (`peer_address`, on the internal address)."
  validation {
    condition     = var.peer_port >= 1 && var.peer_port <= 65535 && floor(var.peer_port) == var.peer_port
    error_message = "peer_port must be a whole number between 1 and 65535."
  }
}

variable "client_network" {
  type        = string
  description = "Which address the operator's clients use: \"external\" (from outside the VPC) or \"internal\" (from inside it, e.g. a bastion)."
  default     = "external"
  validation {
    condition     = contains(["external", "internal"], var.client_network)
    error_message = "client_network must be \"external\" or \"internal\"."
  }
}

variable "data_dir" {
  type        = string
  description = "Absolute path of the nodes' data directory (parent of logs_node_<id>/)."
  validation {
    condition     = startswith(var.data_dir, "/")
    error_message = "data_dir must be an absolute path."
  }
}

variable "profile" {
  type        = string
  description = "raftkv timing profile: fast or seed."
  validation {
    condition     = contains(["fast", "seed"], var.profile)
    error_message = "profile must be fast or seed."
  }
}

variable "ssh_user" {
  type        = string
  description = "User Ansible and Fabric log in as (with passwordless sudo)."
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ssh_user))
    error_message = "ssh_user must be a valid Linux user name."
  }
}

variable "tls" {
  type        = bool
  description = "Whether the client listener serves TLS (certificates made by the playbook under <description dir>/tls). Peers always use mutual TLS."
  default     = true
}

variable "client_cert_auth" {
  type        = bool
  description = "Whether nodes demand a client certificate from clients (--client-cert-auth; needs tls). The description then names the operator's certificate, client-<client_cert_name>."
  default     = true
}

variable "client_cert_name" {
  type        = string
  description = "Name of the operator's client certificate that the playbook makes (tls/client-<name>.pem and .key) for Fabric and the raftkv CLI."
  default     = "ops"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,40}$", var.client_cert_name))
    error_message = "client_cert_name must be 1-41 of a-z, 0-9 and '-'."
  }
}

variable "chrony_servers" {
  type        = list(string)
  description = "NTP servers for chrony on the nodes (empty: Debian's pool)."
  default     = []
}
