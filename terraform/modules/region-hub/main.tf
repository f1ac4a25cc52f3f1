# Region hub: N instances, each with a fixed private IP (ENI) and its own EBS
# data volume for redb; an internal NLB for edge->hub QUIC (UDP 7443) and a
# public NLB for consumers (UDP 4434 WebTransport, TCP 9443 HTTPS/WebSocket).

data "aws_vpc" "this" {
  id = var.vpc_id
}

data "aws_subnet" "hub" {
  count = var.instance_count
  id    = var.subnet_ids[count.index % length(var.subnet_ids)]
}

locals {
  prefix = "trackline-hub-${var.name}"
  short  = replace(substr(replace("tl-hub-${var.name}", "_", "-"), 0, 24), "/-+$/", "")

  tags = merge(var.tags, {
    "trackline:component" = "region-hub"
    "trackline:region"    = var.name
  })

  # Ports of the hub. Fixed by the protocol and documented in
  # terraform/README.md; the security group below opens exactly these.
  peer_port   = 7443 # UDP, edges (and peer hubs) only: inter-node QUIC, mutual TLS
  wt_port     = 4434 # UDP, public: WebTransport to consumer browsers
  wss_port    = 9443 # TCP, public: HTTPS / WebSocket to consumer browsers
  admin_port  = 9102 # TCP, VPC/monitoring only: /metrics, /healthz
  gossip_port = 7946 # UDP, nodes only: foca membership over authenticated QUIC

  vpc_cidr     = data.aws_vpc.this.cidr_block
  admin_cidrs  = distinct(concat([local.vpc_cidr], var.admin_cidrs))
  gossip_cidrs = distinct(concat([local.vpc_cidr], var.edge_cidrs))
  # UDP 7443 is open to edge security groups (rule below), to the hub subnets
  # (peer hubs) and to edge_cidrs, never to the whole VPC or internet.
  hub_subnet_cidrs = distinct([for s in data.aws_subnet.hub : s.cidr_block])
  peer_cidrs       = distinct(concat(local.hub_subnet_cidrs, var.edge_cidrs))

  binary_url = replace(var.release_url, "{version}", var.release_version)
  hub_ips    = [for eni in aws_network_interface.hub : eni.private_ip]
}

# ---------------------------------------------------------------- firewall

resource "aws_security_group" "hub" {
  name        = "${local.prefix}-nodes"
  description = "Trackline region hub ${var.name}: 4434/9443 public, 7443 edges only, admin and gossip internal"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${local.prefix}-nodes" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "webtransport_v4" {
  security_group_id = aws_security_group.hub.id
  description       = "WebTransport (UDP 4434) from anywhere"
  ip_protocol       = "udp"
  from_port         = 4434
  to_port           = 4434
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "https_ws_v4" {
  security_group_id = aws_security_group.hub.id
  description       = "HTTPS/WebSocket (TCP 9443) from anywhere"
  ip_protocol       = "tcp"
  from_port         = 9443
  to_port           = 9443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

# count, not for_each: the edge security group IDs are unknown until apply.
resource "aws_vpc_security_group_ingress_rule" "peer_from_edge_sg" {
  count = length(var.edge_security_group_ids)

  security_group_id            = aws_security_group.hub.id
  description                  = "Inter-node QUIC (UDP 7443) from edge PoP nodes"
  ip_protocol                  = "udp"
  from_port                    = 7443
  to_port                      = 7443
  referenced_security_group_id = var.edge_security_group_ids[count.index]
  tags                         = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "peer_from_cidr" {
  for_each = toset(local.peer_cidrs)

  security_group_id = aws_security_group.hub.id
  description       = "Inter-node QUIC (UDP 7443) from peer hubs and remote edge PoPs"
  ip_protocol       = "udp"
  from_port         = 7443
  to_port           = 7443
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "admin" {
  for_each = toset(local.admin_cidrs)

  security_group_id = aws_security_group.hub.id
  description       = "Admin /metrics and /healthz (TCP 9102) from VPC/monitoring; NLB health checks"
  ip_protocol       = "tcp"
  from_port         = 9102
  to_port           = 9102
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "gossip" {
  for_each = toset(local.gossip_cidrs)

  security_group_id = aws_security_group.hub.id
  description       = "Membership gossip (UDP 7946) between Trackline nodes only"
  ip_protocol       = "udp"
  from_port         = 7946
  to_port           = 7946
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "all" {
  security_group_id = aws_security_group.hub.id
  description       = "All outbound (peer hubs, Secrets Manager, release download)"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

# ---------------------------------------------------------------- instances

# Fixed private IPs, created before the instances so every hub's hub.toml
# can list all peers without a dependency cycle.
resource "aws_network_interface" "hub" {
  count = var.instance_count

  subnet_id       = data.aws_subnet.hub[count.index].id
  security_groups = [aws_security_group.hub.id]
  description     = "${local.prefix}-${count.index}"
  tags            = merge(local.tags, { Name = "${local.prefix}-${count.index}" })
}

resource "aws_ebs_volume" "data" {
  count = var.instance_count

  availability_zone = data.aws_subnet.hub[count.index].availability_zone
  size              = var.data_volume_size_gb
  type              = var.data_volume_type
  encrypted         = true
  kms_key_id        = var.data_volume_kms_key_arn
  tags              = merge(local.tags, { Name = "${local.prefix}-${count.index}-data" })

  # The redb database lives here. Remove this guard deliberately (and take a
  # snapshot) before destroying a hub.
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_instance" "hub" {
  count = var.instance_count

  ami                         = var.ami_id
  instance_type               = var.instance_type
  iam_instance_profile        = aws_iam_instance_profile.hub.name
  user_data_replace_on_change = true
  monitoring                  = true

  network_interface {
    network_interface_id = aws_network_interface.hub[count.index].id
    device_index         = 0
  }

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    hub_name              = "${var.name}-${count.index}"
    region_name           = var.name
    region                = var.region
    peer_port             = local.peer_port
    wt_port               = local.wt_port
    wss_port              = local.wss_port
    admin_port            = local.admin_port
    gossip_port           = local.gossip_port
    advertise_ip          = aws_network_interface.hub[count.index].private_ip
    peers                 = concat([for i, ip in local.hub_ips : "${ip}:${local.peer_port}" if i != count.index], var.extra_peer_endpoints)
    data_volume_id        = aws_ebs_volume.data[count.index].id
    tls_ca_secret_arn     = var.tls_ca_secret_arn
    tls_cert_secret_arn   = var.tls_cert_secret_arn
    tls_key_secret_arn    = var.tls_key_secret_arn
    binary_url            = local.binary_url
    release_version       = var.release_version
    release_sha256        = var.release_sha256
    log_level             = var.log_level
    drain_timeout_seconds = var.drain_timeout_seconds
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_size = 20
    encrypted   = true
  }

  tags        = merge(local.tags, { Name = "${local.prefix}-${count.index}" })
  volume_tags = local.tags
}

resource "aws_volume_attachment" "data" {
  count = var.instance_count

  device_name = "/dev/sdf"
  volume_id   = aws_ebs_volume.data[count.index].id
  instance_id = aws_instance.hub[count.index].id
  # Stop the instance (so the hub drains and redb closes cleanly) before
  # detaching on replacement.
  stop_instance_before_detaching = true
}

# ---------------------------------------------------------------- load balancing

resource "aws_lb" "internal" {
  name                             = "${local.short}-in"
  load_balancer_type               = "network"
  internal                         = true
  subnets                          = var.subnet_ids
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
}

resource "aws_lb" "public" {
  name                             = "${local.short}-pub"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = var.public_subnet_ids
  enable_cross_zone_load_balancing = true
  tags                             = local.tags
}

resource "aws_lb_target_group" "peer" {
  name                 = "${local.short}-peer"
  port                 = 7443
  protocol             = "UDP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = var.drain_timeout_seconds

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

resource "aws_lb_target_group" "webtransport" {
  name                 = "${local.short}-wt"
  port                 = 4434
  protocol             = "UDP"
  target_type          = "instance"
  vpc_id               = var.vpc_id
  deregistration_delay = var.drain_timeout_seconds

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

resource "aws_lb_target_group" "https_ws" {
  name                 = "${local.short}-wss"
  port                 = 9443
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

resource "aws_lb_target_group_attachment" "peer" {
  count            = var.instance_count
  target_group_arn = aws_lb_target_group.peer.arn
  target_id        = aws_instance.hub[count.index].id
  port             = 7443
}

resource "aws_lb_target_group_attachment" "webtransport" {
  count            = var.instance_count
  target_group_arn = aws_lb_target_group.webtransport.arn
  target_id        = aws_instance.hub[count.index].id
  port             = 4434
}

resource "aws_lb_target_group_attachment" "https_ws" {
  count            = var.instance_count
  target_group_arn = aws_lb_target_group.https_ws.arn
  target_id        = aws_instance.hub[count.index].id
  port             = 9443
}

resource "aws_lb_listener" "peer" {
  load_balancer_arn = aws_lb.internal.arn
  port              = 7443
  protocol          = "UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.peer.arn
  }

  tags = local.tags
}

resource "aws_lb_listener" "webtransport" {
  load_balancer_arn = aws_lb.public.arn
  port              = 4434
  protocol          = "UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.webtransport.arn
  }

  tags = local.tags
}

# TCP passthrough: TLS terminates on the hub.
resource "aws_lb_listener" "https_ws" {
  load_balancer_arn = aws_lb.public.arn
  port              = 9443
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.https_ws.arn
  }

  tags = local.tags
}
