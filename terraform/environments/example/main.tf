# Example environment: two hub regions (EU and US), each with its own region
# hub cluster and several edge PoPs wired to the hubs of their region.

locals {
  module_tags = { "trackline:environment" = var.environment }
}

# ---------------------------------------------------------------- EU

module "hub_eu" {
  source    = "../../modules/region-hub"
  providers = { aws = aws.eu }

  name              = "${var.environment}-eu"
  region            = var.eu_region
  vpc_id            = var.eu_network.vpc_id
  subnet_ids        = var.eu_network.private_subnet_ids
  public_subnet_ids = var.eu_network.public_subnet_ids
  instance_type     = var.hub_instance_type
  instance_count    = var.hub_instance_count
  ami_id            = var.eu_ami_id

  edge_security_group_ids = [for k in sort(keys(var.eu_pops)) : module.edge_eu[k].security_group_id]
  admin_cidrs             = var.monitoring_cidrs

  tls_ca_secret_arn   = var.eu_tls_secrets.ca_arn
  tls_cert_secret_arn = var.eu_tls_secrets.hub_cert_arn
  tls_key_secret_arn  = var.eu_tls_secrets.hub_key_arn

  release_url     = var.hub_release_url
  release_version = var.release_version
  release_sha256  = var.hub_release_sha256
  tags            = local.module_tags
}

module "edge_eu" {
  source    = "../../modules/edge-pop"
  providers = { aws = aws.eu }
  for_each  = var.eu_pops

  name           = "${var.environment}-${each.key}"
  region         = var.eu_region
  vpc_id         = var.eu_network.vpc_id
  subnet_ids     = each.value.subnet_ids
  instance_type  = var.edge_instance_type
  instance_count = each.value.instance_count
  ami_id         = var.eu_ami_id

  hub_endpoints = module.hub_eu.hub_endpoints
  admin_cidrs   = var.monitoring_cidrs

  tls_ca_secret_arn   = var.eu_tls_secrets.ca_arn
  tls_cert_secret_arn = var.eu_tls_secrets.edge_cert_arn
  tls_key_secret_arn  = var.eu_tls_secrets.edge_key_arn

  release_url     = var.edge_release_url
  release_version = var.release_version
  release_sha256  = var.edge_release_sha256
  tags            = local.module_tags
}

# ---------------------------------------------------------------- US

module "hub_us" {
  source    = "../../modules/region-hub"
  providers = { aws = aws.us }

  name              = "${var.environment}-us"
  region            = var.us_region
  vpc_id            = var.us_network.vpc_id
  subnet_ids        = var.us_network.private_subnet_ids
  public_subnet_ids = var.us_network.public_subnet_ids
  instance_type     = var.hub_instance_type
  instance_count    = var.hub_instance_count
  ami_id            = var.us_ami_id

  edge_security_group_ids = [for k in sort(keys(var.us_pops)) : module.edge_us[k].security_group_id]
  admin_cidrs             = var.monitoring_cidrs

  tls_ca_secret_arn   = var.us_tls_secrets.ca_arn
  tls_cert_secret_arn = var.us_tls_secrets.hub_cert_arn
  tls_key_secret_arn  = var.us_tls_secrets.hub_key_arn

  release_url     = var.hub_release_url
  release_version = var.release_version
  release_sha256  = var.hub_release_sha256
  tags            = local.module_tags
}

module "edge_us" {
  source    = "../../modules/edge-pop"
  providers = { aws = aws.us }
  for_each  = var.us_pops

  name           = "${var.environment}-${each.key}"
  region         = var.us_region
  vpc_id         = var.us_network.vpc_id
  subnet_ids     = each.value.subnet_ids
  instance_type  = var.edge_instance_type
  instance_count = each.value.instance_count
  ami_id         = var.us_ami_id

  hub_endpoints = module.hub_us.hub_endpoints
  admin_cidrs   = var.monitoring_cidrs

  tls_ca_secret_arn   = var.us_tls_secrets.ca_arn
  tls_cert_secret_arn = var.us_tls_secrets.edge_cert_arn
  tls_key_secret_arn  = var.us_tls_secrets.edge_key_arn

  release_url     = var.edge_release_url
  release_version = var.release_version
  release_sha256  = var.edge_release_sha256
  tags            = local.module_tags
}
