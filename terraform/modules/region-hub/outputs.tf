output "hub_endpoints" {
  description = "Inter-node QUIC endpoints (host:port, UDP 7443, internal NLB) for edge PoPs of this region: pass to the edge-pop module's hub_endpoints."
  value       = ["${aws_lb.internal.dns_name}:7443"]
}

output "hub_private_endpoints" {
  description = "Direct private host:port (UDP 7443) of every hub node, e.g. for extra_peer_endpoints of another region's hubs (needs VPC peering)."
  value       = [for ip in local.hub_ips : "${ip}:7443"]
}

output "hub_private_ips" {
  description = "Fixed private IPs of the hub nodes (index = hub number)."
  value       = local.hub_ips
}

output "hub_cidrs" {
  description = "CIDRs of the subnets the hubs run in; pass to edge-pop's hub_cidrs when edges live in another VPC."
  value       = local.hub_subnet_cidrs
}

output "public_nlb_dns_name" {
  description = "DNS name of the public NLB for consumer browsers; point the region's consumer hostname here."
  value       = aws_lb.public.dns_name
}

output "public_nlb_zone_id" {
  description = "Route 53 hosted zone ID of the public NLB, for alias records."
  value       = aws_lb.public.zone_id
}

output "webtransport_endpoint" {
  description = "Public WebTransport endpoint (host:port, UDP 4434)."
  value       = "${aws_lb.public.dns_name}:4434"
}

output "https_endpoint" {
  description = "Public HTTPS/WebSocket endpoint (https://host:9443)."
  value       = "https://${aws_lb.public.dns_name}:9443"
}

output "internal_nlb_dns_name" {
  description = "DNS name of the internal NLB carrying edge->hub QUIC (UDP 7443)."
  value       = aws_lb.internal.dns_name
}

output "security_group_id" {
  description = "Security group of the hub nodes."
  value       = aws_security_group.hub.id
}

output "instance_ids" {
  description = "EC2 instance IDs of the hubs (index = hub number); roll them one at a time."
  value       = aws_instance.hub[*].id
}

output "data_volume_ids" {
  description = "EBS data volume IDs (redb) per hub; snapshot these before maintenance."
  value       = aws_ebs_volume.data[*].id
}

output "iam_role_arn" {
  description = "ARN of the hub instance role (add it to the secrets' resource policies if they restrict principals)."
  value       = aws_iam_role.hub.arn
}
