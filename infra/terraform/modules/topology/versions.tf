terraform {
  # Provider-free on purpose: `terraform test` runs it without downloading anything.
  required_version = ">= 1.6"
}
