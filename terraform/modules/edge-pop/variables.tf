variable "name" {
  type        = string
  description = "Name of this edge PoP (e.g. \"sto-a\"). Used as prefix for every resource; NLB names are truncated to 32 characters."
}

variable "region" {
  type        = string
  description = "AWS region the PoP runs in. Must match the region of the aws provider passed to the module; written into the node config and used by the aws cli to fetch secrets."
}

variable "vpc_id" {
  type        = string
  description = "ID of the VPC the PoP instances and its load balancer live in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Public subnets (at least one, ideally one per AZ) for the internet-facing NLB and the autoscaling group."

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must contain at least one subnet."
  }
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type for edge nodes."
  default     = "c7g.large"
}

variable "instance_count" {
  type        = number
  description = "Number of edge nodes (desired capacity of the autoscaling group). Rolling replaces one node at a time, so use at least 2 for zero-downtime rollouts."
  default     = 2

  validation {
    condition     = var.instance_count >= 1
    error_message = "instance_count must be at least 1."
  }
}

variable "ami_id" {
  type        = string
  description = "AMI for edge nodes. Must provide systemd, cloud-init, curl and the aws cli v2 (Amazon Linux 2023 does); its architecture must match release_url."
}

variable "hub_endpoints" {
  type        = list(string)
  description = "Region hub inter-node QUIC endpoints as host:port (UDP 7443), normally module.<hub>.hub_endpoints. Edges forward batches there with mutual TLS."

  validation {
    condition     = length(var.hub_endpoints) > 0 && alltrue([for e in var.hub_endpoints : can(regex("^[^:]+:[0-9]+$", e))])
    error_message = "hub_endpoints must be a non-empty list of host:port strings."
  }
}

variable "hub_cidrs" {
  type        = list(string)
  description = "CIDRs of the region hubs when they are outside this VPC (peered VPC / transit gateway). Gossip UDP 7946 is accepted from the VPC CIDR plus these ranges only."
  default     = []
}

variable "tls_ca_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret whose SecretString is the PEM cluster CA certificate."
}

variable "tls_cert_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret whose SecretString is the PEM node certificate chain for edge nodes."
}

variable "tls_key_secret_arn" {
  type        = string
  description = "ARN of the Secrets Manager secret whose SecretString is the PEM private key for edge nodes. Only its ARN ever appears in Terraform."
}

variable "kms_key_arns" {
  type        = list(string)
  description = "Customer-managed KMS keys encrypting the TLS secrets. Leave empty when the secrets use the AWS-managed key."
  default     = []
}

variable "admin_cidrs" {
  type        = list(string)
  description = "Extra CIDRs (monitoring networks) allowed to reach the admin port TCP 9101 (/metrics, /healthz). The VPC CIDR is always allowed (NLB health checks come from it). Never 0.0.0.0/0."
  default     = []

  validation {
    condition     = !contains(var.admin_cidrs, "0.0.0.0/0") && !contains(var.admin_cidrs, "::/0")
    error_message = "admin_cidrs must not contain 0.0.0.0/0 or ::/0: the admin port is VPC/monitoring only."
  }
}

variable "release_url" {
  type        = string
  description = "URL of the edge-node release binary; the literal {version} is replaced by release_version. Example: https://releases.example.org/trackline/{version}/edge-node-aarch64-linux."
}

variable "release_version" {
  type        = string
  description = "Trackline release to install (e.g. \"0.4.2\"). Changing it creates a new launch template version and triggers a rolling instance refresh."
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
  description = "RUST_LOG filter for the edge service."
  default     = "info"
}

variable "drain_timeout_seconds" {
  type        = number
  description = "How long a node drains after SIGTERM (stop accepting, flush batches to hubs) before systemd kills it. Also used as the NLB deregistration delay."
  default     = 60
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource created by the module."
  default     = {}
}
