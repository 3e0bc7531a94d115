terraform {
  # Provider-free on purpose (terraform_data is built in): `terraform test` runs it without
  # downloading anything, and the host-lab test renders its inventory with it exactly as a cloud
  # deployment does.
  required_version = ">= 1.6"
}
