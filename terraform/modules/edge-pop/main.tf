# Edge PoP: internet-facing NLB (UDP 4433 QUIC, TCP 8443 HTTPS fallback,
# both passed through to the node, which terminates TLS) in front of an
# autoscaling group of edge-node instances configured by cloud-init.

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  prefix = "trackline-edge-${var.name}"
  # NLB and target group names are limited to 32 characters.
  short = replace(substr(replace("tl-edge-${var.name}", "_", "-"), 0, 24), "/-+$/", "")

  tags = merge(var.tags, {
    "trackline:component" = "edge-node"
    "trackline:pop"       = var.name
  })

  # Ports of the edge node. They are fixed by the protocol and documented in
  # terraform/README.md; the security group below opens exactly these.
  quic_port   = 4433 # UDP, public: driver fixes (ALPN trackline-driver/1) and HTTP/3 (h3)
  https_port  = 8443 # TCP, public: HTTPS fallback
  admin_port  = 9101 # TCP, VPC/monitoring only: /metrics, /healthz
  gossip_port = 7946 # UDP, nodes only: foca membership over authenticated QUIC

  gossip_cidrs = distinct(concat([data.aws_vpc.this.cidr_block], var.hub_cidrs))
  admin_cidrs  = distinct(concat([data.aws_vpc.this.cidr_block], var.admin_cidrs))

  binary_url = replace(var.release_url, "{version}", var.release_version)

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    pop_name              = var.name
    region                = var.region
    quic_port             = local.quic_port
    https_port            = local.https_port
    admin_port            = local.admin_port
    gossip_port           = local.gossip_port
    hub_endpoints         = var.hub_endpoints
    tls_ca_secret_arn     = var.tls_ca_secret_arn
    tls_cert_secret_arn   = var.tls_cert_secret_arn
    tls_key_secret_arn    = var.tls_key_secret_arn
    binary_url            = local.binary_url
    release_version       = var.release_version
    release_sha256        = var.release_sha256
    log_level             = var.log_level
    drain_timeout_seconds = var.drain_timeout_seconds
  })
}

# ---------------------------------------------------------------- firewall

resource "aws_security_group" "edge" {
  name        = "${local.prefix}-nodes"
  description = "Trackline edge PoP ${var.name}: QUIC/HTTPS public, admin and gossip internal only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.prefix}-nodes" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "quic_v4" {
  security_group_id = aws_security_group.edge.id
  description       = "Driver QUIC datagrams and HTTP/3 (UDP 4433) from anywhere"
  ip_protocol       = "udp"
  from_port         = 4433
  to_port           = 4433
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "https_v4" {
  security_group_id = aws_security_group.edge.id
  description       = "HTTPS-over-TCP fallback (TCP 8443) from anywhere"
  ip_protocol       = "tcp"
  from_port         = 8443
  to_port           = 8443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "admin" {
  for_each = toset(local.admin_cidrs)

  security_group_id = aws_security_group.edge.id
  description       = "Admin /metrics and /healthz (TCP 9101) from VPC/monitoring; NLB health checks"
  ip_protocol       = "tcp"
  from_port         = 9101
  to_port           = 9101
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "gossip" {
  for_each = toset(local.gossip_cidrs)

  security_group_id = aws_security_group.edge.id
  description       = "Membership gossip (UDP 7946) between Trackline nodes only"
  ip_protocol       = "udp"
  from_port         = 7946
  to_port           = 7946
  cidr_ipv4         = each.value
  tags              = local.tags
}

# Outbound: hubs (UDP 7443), Secrets Manager / release download (TCP 443),
# gossip, DNS, NTP. Not restricted further because hub addresses are NLB
# addresses that can change.
resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.edge.id
  description       = "All outbound (hubs, Secrets Manager, release download)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

# ---------------------------------------------------------------- instances

resource "aws_launch_template" "edge" {
  name_prefix            = "${local.prefix}-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.edge.id]
  user_data              = base64encode(local.user_data)
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.edge.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${local.prefix}-node" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "edge" {
  name                      = local.prefix
  vpc_zone_identifier       = var.subnet_ids
  min_size                  = var.instance_count
  max_size                  = var.instance_count + 1 # room for one surge node during refresh
  desired_capacity          = var.instance_count
  health_check_type         = "ELB"
  health_check_grace_period = 180
  default_instance_warmup   = 120
  target_group_arns         = [aws_lb_target_group.quic.arn, aws_lb_target_group.https.arn]

  launch_template {
    id      = aws_launch_template.edge.id
    version = aws_launch_template.edge.latest_version
  }

  # Rolling replacement, started automatically when the launch template
  # changes (new release or AMI): launch-before-terminate with a surge of at
  # least one node (10%, so one at a time in small PoPs). A new node must pass
  # /healthz before an old one is drained (deregistration delay) and stopped.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 100
      max_healthy_percentage = 110
      instance_warmup        = 120
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${local.prefix}-node" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

# ---------------------------------------------------------------- load balancing

resource "aws_lb" "edge" {
  name                             = local.short
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
}

resource "aws_lb_target_group" "quic" {
  name                 = "${local.short}-q"
  port                 = 4433
  protocol             = "UDP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = var.drain_timeout_seconds

  # Keep a client's QUIC flow on the same node for the lifetime of the 5-tuple.
  stickiness {
    enabled = true
    type    = "source_ip"
  }

  health_check {
    protocol            = "HTTP"
    port                = tostring(local.admin_port)
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_target_group" "https" {
  name                 = "${local.short}-t"
  port                 = 8443
  protocol             = "TCP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = var.drain_timeout_seconds

  health_check {
    protocol            = "HTTP"
    port                = tostring(local.admin_port)
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }

  tags = local.tags
}

resource "aws_lb_listener" "quic" {
  load_balancer_arn = aws_lb.edge.arn
  port              = 4433
  protocol          = "UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.quic.arn
  }

  tags = local.tags
}

# TCP passthrough: TLS terminates on the edge node, not on the NLB.
resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.edge.arn
  port              = 8443
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.https.arn
  }

  tags = local.tags
}
