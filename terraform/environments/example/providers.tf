# One provider per hub region. Each region's hubs and PoPs are created with
# that region's provider alias.

provider "aws" {
  alias  = "eu"
  region = var.eu_region

  default_tags {
    tags = merge(var.tags, { "trackline:environment" = var.environment })
  }
}

provider "aws" {
  alias  = "us"
  region = var.us_region

  default_tags {
    tags = merge(var.tags, { "trackline:environment" = var.environment })
  }
}
