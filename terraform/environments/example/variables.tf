variable "environment" {
  type        = string
  description = "Environment name, used in resource names and tags (e.g. \"example\", \"staging\", \"prod\")."
  default     = "example"
}

variable "eu_region" {
  type        = string
  description = "AWS region of the European hub region and its PoPs."
  default     = "eu-north-1"
}

variable "us_region" {
  type        = string
  description = "AWS region of the North American hub region and its PoPs."
  default     = "us-east-1"
}

variable "eu_network" {
  type = object({
    vpc_id             = string
    private_subnet_ids = list(string)
    public_subnet_ids  = list(string)
  })
  description = "Existing VPC of the EU region: private subnets (hubs, internal NLB) and public subnets (hub public NLB). PoPs name their own subnets in eu_pops."
}

variable "us_network" {
  type = object({
    vpc_id             = string
    private_subnet_ids = list(string)
    public_subnet_ids  = list(string)
  })
  description = "Existing VPC of the US region: private subnets (hubs, internal NLB) and public subnets (hub public NLB). PoPs name their own subnets in us_pops."
}

variable "eu_pops" {
  type = map(object({
    subnet_ids     = list(string)
    instance_count = number
  }))
  description = "Edge PoPs in the EU region, keyed by PoP name: public subnets (in eu_network's VPC) and node count. All are wired to the EU hubs."
}

variable "us_pops" {
  type = map(object({
    subnet_ids     = list(string)
    instance_count = number
  }))
  description = "Edge PoPs in the US region, keyed by PoP name: public subnets (in us_network's VPC) and node count. All are wired to the US hubs."
}

variable "eu_ami_id" {
  type        = string
  description = "AMI (in eu_region) for edge and hub nodes, e.g. Amazon Linux 2023 arm64."
}

variable "us_ami_id" {
  type        = string
  description = "AMI (in us_region) for edge and hub nodes, e.g. Amazon Linux 2023 arm64."
}

variable "hub_instance_count" {
  type        = number
  description = "Hub nodes per region."
  default     = 2
}

variable "edge_instance_type" {
  type        = string
  description = "EC2 instance type of edge nodes."
  default     = "c7g.large"
}

variable "hub_instance_type" {
  type        = string
  description = "EC2 instance type of hub nodes."
  default     = "m7g.large"
}

variable "eu_tls_secrets" {
  type = object({
    ca_arn        = string
    edge_cert_arn = string
    edge_key_arn  = string
    hub_cert_arn  = string
    hub_key_arn   = string
  })
  description = "ARNs of the Secrets Manager secrets (in eu_region) holding the PEM cluster CA, edge cert/key and hub cert/key. Only ARNs, never the PEM contents."
}

variable "us_tls_secrets" {
  type = object({
    ca_arn        = string
    edge_cert_arn = string
    edge_key_arn  = string
    hub_cert_arn  = string
    hub_key_arn   = string
  })
  description = "ARNs of the Secrets Manager secrets (in us_region) holding the PEM cluster CA, edge cert/key and hub cert/key. Only ARNs, never the PEM contents."
}

variable "monitoring_cidrs" {
  type        = list(string)
  description = "Monitoring networks allowed to scrape the admin ports (edge 9101, hub 9102) in addition to each VPC's own CIDR."
  default     = []
}

variable "release_version" {
  type        = string
  description = "Trackline release deployed to all nodes."
}

variable "edge_release_url" {
  type        = string
  description = "URL template of the edge-node binary; {version} is replaced by release_version."
}

variable "edge_release_sha256" {
  type        = string
  description = "SHA-256 of the edge-node binary of release_version."
}

variable "hub_release_url" {
  type        = string
  description = "URL template of the region-hub binary; {version} is replaced by release_version."
}

variable "hub_release_sha256" {
  type        = string
  description = "SHA-256 of the region-hub binary of release_version."
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource (provider default_tags and module tags)."
  default     = {}
}
