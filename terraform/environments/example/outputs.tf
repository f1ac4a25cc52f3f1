output "driver_endpoints" {
  description = "Per PoP (\"<region>/<pop>\"): QUIC endpoint for drivers (UDP 4433) and HTTPS fallback (TCP 8443)."
  value = merge(
    { for k, m in module.edge_eu : "eu/${k}" => { quic = m.driver_endpoint, https = m.fallback_endpoint, nlb_dns_name = m.nlb_dns_name, nlb_zone_id = m.nlb_zone_id } },
    { for k, m in module.edge_us : "us/${k}" => { quic = m.driver_endpoint, https = m.fallback_endpoint, nlb_dns_name = m.nlb_dns_name, nlb_zone_id = m.nlb_zone_id } },
  )
}

output "consumer_endpoints" {
  description = "Per hub region: public WebTransport (UDP 4434) and HTTPS/WebSocket (TCP 9443) endpoints for consumer browsers, plus the NLB name/zone for DNS alias records."
  value = {
    eu = { webtransport = module.hub_eu.webtransport_endpoint, https = module.hub_eu.https_endpoint, nlb_dns_name = module.hub_eu.public_nlb_dns_name, nlb_zone_id = module.hub_eu.public_nlb_zone_id }
    us = { webtransport = module.hub_us.webtransport_endpoint, https = module.hub_us.https_endpoint, nlb_dns_name = module.hub_us.public_nlb_dns_name, nlb_zone_id = module.hub_us.public_nlb_zone_id }
  }
}

output "hub_endpoints" {
  description = "Per hub region: the inter-node endpoints the region's edges forward to, and the hubs' fixed private addresses."
  value = {
    eu = { via_nlb = module.hub_eu.hub_endpoints, direct = module.hub_eu.hub_private_endpoints }
    us = { via_nlb = module.hub_us.hub_endpoints, direct = module.hub_us.hub_private_endpoints }
  }
}

output "edge_autoscaling_groups" {
  description = "Autoscaling group, launch template and NLB ARN per PoP, for rolling instance refreshes (see README)."
  value = merge(
    { for k, m in module.edge_eu : "eu/${k}" => { asg_name = m.asg_name, launch_template_id = m.launch_template_id, nlb_arn = m.nlb_arn } },
    { for k, m in module.edge_us : "us/${k}" => { asg_name = m.asg_name, launch_template_id = m.launch_template_id, nlb_arn = m.nlb_arn } },
  )
}

output "hub_instances" {
  description = "Hub instance IDs and data volume IDs per region, for one-at-a-time rolls and snapshots."
  value = {
    eu = { instance_ids = module.hub_eu.instance_ids, data_volume_ids = module.hub_eu.data_volume_ids }
    us = { instance_ids = module.hub_us.instance_ids, data_volume_ids = module.hub_us.data_volume_ids }
  }
}

output "security_groups" {
  description = "Security group IDs of the edge PoPs (per \"<region>/<pop>\") and of the hubs (per region), e.g. for extra rules in other stacks."
  value = {
    edges = merge(
      { for k, m in module.edge_eu : "eu/${k}" => m.security_group_id },
      { for k, m in module.edge_us : "us/${k}" => m.security_group_id },
    )
    hubs = { eu = module.hub_eu.security_group_id, us = module.hub_us.security_group_id }
  }
}

output "node_iam_roles" {
  description = "Instance role ARNs per PoP and hub region; reference them in the TLS secrets' resource policies if those restrict principals."
  value = {
    edges = merge(
      { for k, m in module.edge_eu : "eu/${k}" => m.iam_role_arn },
      { for k, m in module.edge_us : "us/${k}" => m.iam_role_arn },
    )
    hubs = { eu = module.hub_eu.iam_role_arn, us = module.hub_us.iam_role_arn }
  }
}

output "internal_addresses" {
  description = "Internal view per hub region: internal NLB name, hub private IPs and hub subnet CIDRs (for edges in peered VPCs or cross-region hub peering)."
  value = {
    eu = { internal_nlb_dns_name = module.hub_eu.internal_nlb_dns_name, hub_private_ips = module.hub_eu.hub_private_ips, hub_cidrs = module.hub_eu.hub_cidrs }
    us = { internal_nlb_dns_name = module.hub_us.internal_nlb_dns_name, hub_private_ips = module.hub_us.hub_private_ips, hub_cidrs = module.hub_us.hub_cidrs }
  }
}
