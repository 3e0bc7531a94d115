variable "node_count" {
  type        = number
  description = "Number of raftkv nodes. Odd and at least 3, so that a majority survives one failure."
  validation {
    condition     = var.node_count >= 3 && var.node_count % 2 == 1 && var.node_count <= 99 && floor(var.node_count) == var.node_count
    error_message = "node_count must be an odd whole number between 3 and 99 (an even count adds no fault tolerance)."
  }
}

variable "zones" {
  type        = list(string)
  description = "Zones to spread the nodes over, round-robin: node i goes to zones[i % length(zones)]. Zones in several regions make the cluster geo-distributed (one subnet per region)."
  validation {
    condition     = length(var.zones) > 0
    error_message = "zones must name at least one zone."
  }
  validation {
    condition     = alltrue([for zone in var.zones : can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", zone))])
    error_message = "every zone must look like europe-west1-b (region, then a dash and one letter)."
  }
  validation {
    condition     = length(distinct(var.zones)) == length(var.zones)
    error_message = "zones must not repeat a zone."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name; node i is named <prefix>-<i>."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,40}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-42 lowercase letters, digits or dashes, starting with a letter (GCE naming rules)."
  }
}

variable "network_cidr" {
  type        = string
  description = "IPv4 range the per-region subnets are carved from."
  validation {
    condition     = can(cidrhost(var.network_cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", var.network_cidr))
    error_message = "network_cidr must be an IPv4 CIDR block such as 10.42.0.0/16."
  }
}

variable "subnet_newbits" {
  type        = number
  description = "Extra prefix bits for each region's subnet (8 turns a /16 into /24 subnets)."
  default     = 8
  validation {
    condition     = var.subnet_newbits >= 1 && var.subnet_newbits <= 16
    error_message = "subnet_newbits must be between 1 and 16."
  }
}

variable "port" {
  type        = number
  description = "TCP port every node serves clients on (the client listener: KeyValue, ServeClient)."
  default     = 50050
  validation {
    condition     = var.port >= 1024 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number between 1024 and 65535."
  }
}

variable "peer_port" {
  type        = number
  description = "TCP port every node serves the other nodes on (the peer listener, mutual TLS). raftkv's default is the client port + 1000."
  default     = 51050
  validation {
    condition     = var.peer_port >= 1024 && var.peer_port <= 65535 && floor(var.peer_port) == var.peer_port
    error_message = "peer_port must be a whole number between 1024 and 65535."
  }
}

variable "first_host_number" {
  type        = number
  description = "Node i gets the (first_host_number + i)-th address of its region's subnet (GCE reserves the first two)."
  default     = 10
  validation {
    condition     = var.first_host_number >= 2
    error_message = "first_host_number must be at least 2: GCE reserves a subnet's first two addresses."
  }
}
