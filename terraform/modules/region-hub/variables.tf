variable "name" {
  type        = string
  description = "Name of this hub region (e.g. \"eu\"). Used as prefix for every resource; NLB names are truncated to 32 characters."
}

variable "region" {
  type        = string
  description = "AWS region the hubs run in. Must match the region of the aws provider passed to the module."
}

variable "vpc_id" {
  type        = string
  description = "ID of the VPC the hubs and their load balancers live in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the hub instances and the internal NLB (UDP 7443). Hubs are spread over them round-robin; they need outbound access (NAT or VPC endpoints) to Secrets Manager and the release URL."

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must contain at least one subnet."
  }
}

variable "public_subnet_ids" {
  type        = list(string)
  description = "Public subnets for the internet-facing NLB (UDP 4434 WebTransport, TCP 9443 HTTPS/WebSocket), one per AZ used by subnet_ids."

  validation {
    condition     = length(var.public_subnet_ids) > 0
    error_message = "public_subnet_ids must contain at least one subnet."
  }
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type for hub nodes."
  default     = "m7g.large"
}

variable "instance_count" {
  type        = number
  description = "Number of hub nodes. Each gets its own EBS data volume (redb) and a fixed private IP listed as a peer in the other hubs' hub.toml."
  default     = 2

  validation {
    condition     = var.instance_count >= 1
    error_message = "instance_count must be at least 1."
  }
}

variable "ami_id" {
  type        = string
  description = "AMI for hub nodes. Must provide systemd, cloud-init, curl, xfsprogs and the aws cli v2 (Amazon Linux 2023 does); its architecture must match release_url."
}

variable "data_volume_size_gb" {
  type        = number
  description = "Size in GiB of each hub's EBS data volume, mounted at /var/lib/trackline (redb database)."
  default     = 100
}

variable "data_volume_type" {
  type        = string
  description = "EBS volume type of the data volumes."
  default     = "gp3"
}

variable "data_volume_kms_key_arn" {
  type        = string
  description = "KMS key for encrypting the data volumes; null uses the account's default EBS key. Volumes are always encrypted."
  default     = null
}

variable "edge_security_group_ids" {
  type        = list(string)
  description = "Security groups of edge PoPs in the same VPC (module.<pop>.security_group_id). Their nodes may reach the inter-node QUIC port UDP 7443."
  default     = []
}

variable "edge_cidrs" {
  type        = list(string)
  description = "CIDRs of edge PoPs outside this VPC (peered VPC / transit gateway) that may reach UDP 7443. Never 0.0.0.0/0: the port is for edges only."
  default     = []

  validation {
    condition     = !contains(var.edge_cidrs, "0.0.0.0/0") && !contains(var.edge_cidrs, "::/0")
    error_message = "edge_cidrs must not contain 0.0.0.0/0 or ::/0."
  }
}

variable "admin_cidrs" {
  type        = list(string)
  description = "Extra CIDRs (monitoring networks) allowed to reach the admin port TCP 9102 (/metrics, /healthz). The VPC CIDR is always allowed (NLB health checks come from it). Never 0.0.0.0/0."
  default     = []

  validation {
    condition     = !contains(var.admin_cidrs, "0.0.0.0/0") && !contains(var.admin_cidrs, "::/0")
    error_message = "admin_cidrs must not contain 0.0.0.0/0 or ::/0: the admin port is VPC/monitoring only."
  }
}

variable "extra_peer_endpoints" {
  type        = list(string)
  description = "Additional peer hubs (host:port, UDP 7443) outside this module, e.g. hubs of another region, appended to the peers in hub.toml."
  default     = []
}

variable "tls_ca_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret whose SecretString is the PEM cluster CA certificate."
}

variable "tls_cert_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret whose SecretString is the PEM node certificate chain for hub nodes."
}

variable "tls_key_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret whose SecretString is the PEM private key for hub nodes. Only its ARN ever appears in Terraform."
}

variable "kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys encrypting the TLS secrets. Leave empty when the secrets use the AWS-managed key."
  default     = []
}

variable "release_url" {
  type        = string
  description = "URL of the region-hub release binary; the literal {version} is replaced by release_version."
}

variable "release_version" {
  type        = string
  description = "Trackline release to install. Changing it changes user data, which replaces hub instances (data volumes are kept and re-attached); roll them one at a time, see README."
}

variable "release_sha256" {
  type        = string
  description = "Expected SHA-256 (hex) of the release binary; cloud-init refuses to start a binary that does not match."

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.release_sha256))
    error_message = "release_sha256 must be 64 lowercase hex characters."
  }
}

variable "log_level" {
  type        = string
  description = "RUST_LOG filter for the hub service."
  default     = "info"
}

variable "drain_timeout_seconds" {
  type        = number
  description = "How long a hub drains after SIGTERM (close consumer sessions, flush redb) before systemd kills it. Also used as the NLB deregistration delay."
  default     = 60
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource created by the module."
  default     = {}
}
