terraform {
  # Configure a remote backend for real use, e.g.:
  # backend "s3" {
  #   bucket         = "my-trackline-tfstate"
  #   key            = "example/terraform.tfstate"
  #   region         = "eu-north-1"
  #   dynamodb_table = "trackline-tflock"
  #   encrypt        = true
  # }

  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40.0, < 6.0.0"
    }
  }
}
