variable "cluster_name" {
  type        = string
  description = "Name of the cluster, written into the cluster description."
  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", var.cluster_name))
    error_message = "cluster_name must be letters, digits, dots, dashes or underscores."
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
  description = "TCP port each node serves peers and clients on."
  validation {
    condition     = var.port >= 1 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number between 1 and 65535."
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
  description = "Whether nodes and clients use TLS (certificates made by the playbook under <description dir>/tls)."
  default     = true
}

variable "chrony_servers" {
  type        = list(string)
  description = "NTP servers for chrony on the nodes (empty: Debian's pool)."
  default     = []
}
