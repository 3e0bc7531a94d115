variable "project_id" {
  type        = string
  description = "Google Cloud project to create everything in. No default on purpose: name it in terraform.tfvars or TF_VAR_project_id."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id: 6-30 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "zones" {
  type        = list(string)
  description = "Zones to spread the nodes over (node i in zones[i % n]). Zones of several regions give a geo-distributed cluster with one subnet per region; prefer at least three zones so a zone outage leaves a majority."
  default     = ["europe-west1-b", "europe-west1-c", "europe-west1-d"]
  validation {
    condition     = length(var.zones) > 0
    error_message = "zones must name at least one zone."
  }
  validation {
    condition     = alltrue([for zone in var.zones : can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", zone))])
    error_message = "every zone must look like europe-west1-b."
  }
  validation {
    condition     = length(distinct(var.zones)) == length(var.zones)
    error_message = "zones must not repeat a zone."
  }
}

variable "node_count" {
  type        = number
  description = "Number of raftkv nodes: odd and at least 3."
  default     = 3
  validation {
    condition     = var.node_count >= 3 && var.node_count % 2 == 1 && var.node_count <= 99 && floor(var.node_count) == var.node_count
    error_message = "node_count must be an odd whole number between 3 and 99 (an even count adds no fault tolerance)."
  }
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name (network, subnets, firewall rules, VMs <prefix>-<id>)."
  default     = "raftkv"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,40}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-42 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "machine_type" {
  type        = string
  description = "Machine type of every node (e2-small: 2 shared vCPUs, 2 GB)."
  default     = "e2-small"
  validation {
    condition     = can(regex("^[a-z0-9]+-[a-z0-9-]+$", var.machine_type))
    error_message = "machine_type must be a machine type name such as e2-small."
  }
}

variable "boot_disk_size_gb" {
  type        = number
  description = "Boot disk size in GB (holds the OS, the virtualenv and the node's data)."
  default     = 10
  validation {
    condition     = var.boot_disk_size_gb >= 10 && var.boot_disk_size_gb <= 1000
    error_message = "boot_disk_size_gb must be between 10 and 1000."
  }
}

variable "boot_disk_type" {
  type        = string
  description = "Boot disk type. pd-balanced fsyncs far faster than pd-standard, and every acknowledged write waits for an fsync."
  default     = "pd-balanced"
  validation {
    condition     = contains(["pd-standard", "pd-balanced", "pd-ssd"], var.boot_disk_type)
    error_message = "boot_disk_type must be pd-standard, pd-balanced or pd-ssd."
  }
}

variable "image" {
  type        = string
  description = "Boot image: Debian 12, which the Ansible role supports."
  default     = "debian-cloud/debian-12"
  validation {
    condition     = can(regex("debian-12", var.image))
    error_message = "image must be a Debian 12 image (the Ansible role checks for Debian 12)."
  }
}

variable "network_cidr" {
  type        = string
  description = "IPv4 range the per-region subnets are carved from (one /24 per region by default)."
  default     = "10.42.0.0/16"
  validation {
    condition     = can(cidrhost(var.network_cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", var.network_cidr))
    error_message = "network_cidr must be an IPv4 CIDR block such as 10.42.0.0/16."
  }
}

variable "raftkv_port" {
  type        = number
  description = "TCP port each node serves clients on (KeyValue, ServeClient); open to client_cidrs."
  default     = 50050
  validation {
    condition     = var.raftkv_port >= 1024 && var.raftkv_port <= 65535 && floor(var.raftkv_port) == var.raftkv_port
    error_message = "raftkv_port must be a whole number between 1024 and 65535."
  }
}

variable "raftkv_peer_port" {
  type        = number
  description = "TCP port each node serves the other nodes on (Raft, mutual TLS); open to the cluster's own VMs only. Must differ from raftkv_port; raftkv's own default is raftkv_port + 1000."
  default     = 51050
  validation {
    condition     = var.raftkv_peer_port >= 1024 && var.raftkv_peer_port <= 65535 && floor(var.raftkv_peer_port) == var.raftkv_peer_port
    error_message = "raftkv_peer_port must be a whole number between 1024 and 65535."
  }
}

variable "client_cidrs" {
  type        = list(string)
  description = "IPv4 ranges allowed to reach the client port (raftkv_port, never the peer port) from outside the cluster. Empty: no client outside the cluster."
  default     = []
  validation {
    condition     = alltrue([for cidr in var.client_cidrs : can(cidrhost(cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", cidr))])
    error_message = "every client_cidrs entry must be an IPv4 CIDR block such as 203.0.113.7/32."
  }
}

variable "admin_cidrs" {
  type        = list(string)
  description = "IPv4 ranges allowed to SSH to the nodes (where Ansible and Fabric run). Required: there is no default."
  validation {
    condition     = length(var.admin_cidrs) > 0
    error_message = "admin_cidrs must name at least one range (your address as a.b.c.d/32), or Ansible cannot reach the nodes."
  }
  validation {
    condition     = alltrue([for cidr in var.admin_cidrs : can(cidrhost(cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", cidr))])
    error_message = "every admin_cidrs entry must be an IPv4 CIDR block such as 203.0.113.7/32."
  }
  validation {
    condition     = !contains(var.admin_cidrs, "0.0.0.0/0")
    error_message = "admin_cidrs must not be 0.0.0.0/0: SSH would be open to the whole internet."
  }
}

variable "ssh_user" {
  type        = string
  description = "User created on every VM from the ssh-keys metadata, with passwordless sudo; Ansible and Fabric log in as it."
  default     = "deploy"
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ssh_user)) && var.ssh_user != "root"
    error_message = "ssh_user must be a valid Linux user name other than root."
  }
}

variable "ssh_public_key" {
  type        = string
  description = "OpenSSH public key (one line) allowed to log in as ssh_user."
  validation {
    condition     = can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$", trimspace(var.ssh_public_key)))
    error_message = "ssh_public_key must be one OpenSSH public key line (ssh-ed25519 AAAA... comment)."
  }
}

variable "profile" {
  type        = string
  description = "raftkv timing profile. seed (election 5-10 s, lease 3.5 s) tolerates cross-region round trips; fast assumes a LAN."
  default     = "seed"
  validation {
    condition     = contains(["fast", "seed"], var.profile)
    error_message = "profile must be fast or seed."
  }
}

variable "tls" {
  type        = bool
  description = "Serve clients over TLS (certificates made by the playbook on the controller). Peers always use mutual TLS, whatever this says."
  default     = true
}

variable "client_cert_auth" {
  type        = bool
  description = "Nodes demand a client certificate from the CA (--client-cert-auth; needs tls). The playbook makes the operator's, tls/client-ops.pem, which cluster.json names."
  default     = true
}

variable "data_dir" {
  type        = string
  description = "Absolute path of each node's data directory."
  default     = "/var/lib/raftkv"
  validation {
    condition     = startswith(var.data_dir, "/")
    error_message = "data_dir must be an absolute path."
  }
}

variable "spot" {
  type        = bool
  description = "Use Spot VMs (cheaper, but Google may stop them at any time: a fault injector of its own)."
  default     = false
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every VM (cost tracking)."
  default     = {}
  validation {
    condition     = alltrue([for key, value in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", key)) && can(regex("^[a-z0-9_-]{0,63}$", value))])
    error_message = "label keys must start with a lowercase letter; keys and values may hold lowercase letters, digits, _ and -."
  }
}
