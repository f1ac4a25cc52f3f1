output "nlb_dns_name" {
  description = "DNS name of the PoP's public NLB. Point the drivers' PoP hostname (CNAME/alias) here: UDP 4433 (QUIC) and TCP 8443 (HTTPS)."
  value       = aws_lb.edge.dns_name
}

output "nlb_zone_id" {
  description = "Route 53 hosted zone ID of the NLB, for alias records."
  value       = aws_lb.edge.zone_id
}

output "nlb_arn" {
  description = "ARN of the PoP's public NLB."
  value       = aws_lb.edge.arn
}

output "driver_endpoint" {
  description = "QUIC endpoint drivers connect to (host:port, UDP, ALPN trackline-driver/1 and h3)."
  value       = "${aws_lb.edge.dns_name}:4433"
}

output "fallback_endpoint" {
  description = "HTTPS-over-TCP fallback endpoint (host:port)."
  value       = "${aws_lb.edge.dns_name}:8443"
}

output "security_group_id" {
  description = "Security group of the edge nodes. Pass it to the region hub's edge_security_group_ids so hubs accept UDP 7443 from this PoP."
  value       = aws_security_group.edge.id
}

output "asg_name" {
  description = "Name of the autoscaling group; use it for instance refreshes (rolling one node at a time)."
  value       = aws_autoscaling_group.edge.name
}

output "launch_template_id" {
  description = "ID of the launch template used by the autoscaling group."
  value       = aws_launch_template.edge.id
}

output "iam_role_arn" {
  description = "ARN of the edge instance role (add it to the secrets' resource policies if they restrict principals)."
  value       = aws_iam_role.edge.arn
}
